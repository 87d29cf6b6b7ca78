# The two commands of the quick start; each bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# optimize the shipped digits model and report size, MACs and fidelity on its held-out set
demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/onnxopt optimize models/digits_cnn.onnx -o out/digits_cnn.opt.onnx \
		--passes simplify --calib models/digits_eval.npz

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check onnxopt tests benchmarks models

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache
