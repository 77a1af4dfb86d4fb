# plprobe — the two commands a new user needs: `make demo` and `make test`.
# Both work on a fresh Debian 12 machine as root: they install what they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 nftables tcpdump libpcap0.8 conntrack procps psmisc \
                prometheus prometheus-blackbox-exporter python3-venv systemd \
                chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: help deps apt venv test lint demo clean

help:
	@echo "make demo   the product demo on the built-in lab (needs root)"
	@echo "make test   install everything, ruff, and the whole test suite (needs root)"
	@echo "make lint   ruff and mypy"

# Debian packages: apt-get update first, install only when something is missing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

deps: apt venv

lint: venv
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/mypy agent

test: deps lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: deps
	$(PY) -m agent.cli.demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
