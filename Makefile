# pli: `make demo` and `make test` set up everything they need on a fresh
# Debian machine (as root): system packages, .venv, generated gRPC code and
# the development token under var/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := softhsm2 opensc poppler-utils postgresql libpq5 \
  fonts-dejavu-core xmlsec1 libnss3-tools
BUF := build/tools/node_modules/.bin/buf
STAMP := $(VENV)/.installed
export PLI_HOME ?= $(CURDIR)/var

.PHONY: all demo test serve setup system proto lint bench hsm clean FORCE

all: setup

system:
	@missing=""; command -v npm >/dev/null || missing="npm"; \
	for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "grpcio-tools==1.85.1"
	$(MAKE) proto
	$(BIN)/pip install -q -e ".[dev]" --config-settings editable_mode=strict
	touch $@

# The strict editable install links each module into build/, so import-linter
# sees a real package tree; a module added later needs linking again.
SOURCES := $(sort $(wildcard domain/*.py hsm/*.py infrastructure/*.py \
  services/*.py compliance/*.py proto/pli/v1/*.proto))
$(VENV)/.sources: $(STAMP) FORCE
	@echo "$(SOURCES)" | cmp -s - $@ || { \
	  $(MAKE) --no-print-directory proto && \
	  $(BIN)/pip install -q --no-deps --no-build-isolation -e . \
	    --config-settings editable_mode=strict && echo "$(SOURCES)" > $@; }

FORCE:

proto:
	rm -rf proto/gen && mkdir -p proto/gen/pli/v1
	touch proto/gen/pli/v1/__init__.py
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto/gen \
	  --pyi_out=proto/gen --grpc_python_out=proto/gen proto/pli/v1/*.proto

$(BUF): | system
	mkdir -p build/tools
	cd build/tools && npm install --silent --no-audit --no-fund @bufbuild/buf@1.75.0

setup: $(STAMP) $(VENV)/.sources $(BUF)

hsm: setup
	$(BIN)/pli hsm init

lint: setup
	cd proto && ../$(BUF) lint
	$(BIN)/ruff check .
	$(BIN)/lint-imports

serve: hsm
	$(BIN)/pli serve

demo: hsm
	$(BIN)/pli demo $(if $(LETTER),--letter "$(LETTER)")

test: setup
	cd proto && ../$(BUF) lint
	$(BIN)/lint-imports
	$(BIN)/pytest -q

bench: hsm
	$(BIN)/python bench/deposit.py
	$(BIN)/python bench/stamping.py
	$(BIN)/python bench/audit.py

clean:
	rm -rf $(VENV) build proto/gen var
