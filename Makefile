# The two commands of the README. Both set up .venv first (idempotent).
PYTHON := .venv/bin/python

.PHONY: install demo test

install:
	bash tools/install.sh

demo: install
	$(PYTHON) tools/smoke_check.py

test: install
	$(PYTHON) -m pytest -q tests
