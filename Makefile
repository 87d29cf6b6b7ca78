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

# tune the shipped MobileNet-style digits classifier on the one-core CPU profile: Nevergrad over
# pruning x int8 x session settings, each trial scored on held-out digits and timed interleaved with
# the input; prints the Pareto front and writes best.onnx and report.html to out/tune-mobilenet
demo: $(STAMP)
	$(VENV)/bin/onnxopt tune models/mobilenet_digits.onnx --profile cpu-1t \
		--calib models/mobilenet_digits_eval.npz --target "drop<=0.01" --budget 12 --out out/tune-mobilenet

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check onnxopt tests benchmarks models

# the README's tables (about an hour on 2 cores); benchmarks/webgpu.py needs a GPU and is run by hand
bench: $(STAMP)
	$(PY) benchmarks/quantization.py digits ppocr_cls ppocr_det light_squeezenet light_resnet50
	$(PY) benchmarks/pruning.py
	$(PY) benchmarks/profiling.py

clean:
	rm -rf $(VENV) out .pytest_cache
