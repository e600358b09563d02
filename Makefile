# The two commands of the README: `make demo` and `make test`.
# Both set up everything on a fresh Debian machine: Debian packages (when root),
# a virtualenv in .venv, the Python packages and the compiled charging bridge.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEB_PACKAGES := mosquitto libzbar0 zint fuse3 tmux
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean deps venv

demo: $(STAMP)
	$(PY) -m hw_sim.demo

test: $(STAMP)
	bash tools/run-tests.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check device gateway hw_sim tests
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m hw_sim.bench all

deps:
	@bash tools/debian-deps.sh $(DEB_PACKAGES)

$(STAMP): pyproject.toml setup.py $(wildcard gateway/bridge/*.pyx) | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel Cython
	$(PIP) install -q -e '.[test]'
	$(PY) -c "import gateway.bridge as b; print('charging bridge:', b.IMPLEMENTATION)"
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info gateway/bridge/*.so gateway/bridge/*.c
