"""infrastructure"""
