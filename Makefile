# The two commands of the README. Both set up .venv first (idempotent).
PYTHON := .venv/bin/python

.PHONY: install demo test

install:
	bash tools/install.sh

# The main job: generate the synthetic data and pretrain the demo classifier
# (reduced L2ViT, official checkpoint layout) if missing, fine-tune the demo
# Mask R-CNN from it on the CPU, test it (box/mask AP), paint its predictions.
demo: install
	$(PYTHON) tools/demo.py

test: install
	$(PYTHON) -m pytest -q tests
