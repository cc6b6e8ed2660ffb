"""The errors the domain raises: one for bad input, one per broken rule.

Callers catch :class:`InvalidInput` to report each faulty field, and
:class:`RuleViolation` to report which legal or lifecycle rule a command
broke; the gRPC layer maps each to exactly one status code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DomainError", "FieldProblem", "InvalidInput", "RuleViolation"]


class DomainError(Exception):
    """Base class of every error raised by ``pli.domain``."""


@dataclass(frozen=True)
class FieldProblem:
    """What is wrong with one field of a command."""

    field: str
    description: str


class InvalidInput(DomainError):
    """A command's input is malformed; nothing was changed."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.description}" for p in problems))


class RuleViolation(DomainError):
    """A well-formed command that the letter's rules forbid in its state."""

    def __init__(self, rule: str, description: str) -> None:
        self.rule = rule
        self.description = description
        super().__init__(f"{rule}: {description}")
