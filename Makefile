# The project's tasks. `make dev` and `make test` are the README's quick start.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: dev test tools venv lint crds unit e2e clean

tools:  ## build the real servers (etcd, kube-apiserver, kube-controller-manager, kubectl, Vault, OPA, helm) and install Kafka
	hack/tools.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

dev: venv  ## the local default: control plane, Vault dev, built-in PDP, operator
	hack/tools.sh dev
	$(VENV)/bin/secretgrants dev

test: tools venv lint  ## everything: lint, unit and e2e tests against real servers
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

e2e: tools venv
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

crds: venv  ## regenerate crds/ from the API models
	$(VENV)/bin/secretgrants crds --write crds
	cp crds/*.secretgrants.io.yaml charts/secretgrants/crds/

clean:
	rm -rf $(VENV) .cache
