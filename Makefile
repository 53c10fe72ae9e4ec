# The two commands of the README. Both set up .venv first (idempotent).
PYTHON := .venv/bin/python

.PHONY: install demo test

install:
	bash tools/install.sh

# The main job: generate the synthetic data if missing, train the demo Mask R-CNN
# (reduced L2ViT) on the CPU, test it (box/mask AP) and paint its predictions.
demo: install
	$(PYTHON) tools/demo.py

test: install
	$(PYTHON) -m pytest -q tests
