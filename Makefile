# The two commands of the README: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test setup redis-server model clean

run: setup
	$(PY) -m stack

test: setup
	$(PY) -m pytest

setup: $(VENV)/.installed redis-server model

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

redis-server:
	@scripts/ensure-redis-server.sh

model: $(VENV)/.installed
	$(PY) -m model_tools build-default --if-missing

clean:
	rm -rf $(VENV) models/*.pth models/*.sha256 .pytest_cache
