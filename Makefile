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

# optimize the shipped digits model (fold BN, prune half the MACs in multiples of 8 channels with
# least-squares recovery, quantize only if int8 is measured faster), report size, MACs and
# fidelity on held-out samples, then measure both models interleaved on the one-core CPU profile
DEMO_PASSES := simplify,prune:target_macs=0.5,strategy=sensitivity,round_to=8,calib_size=150,quantize:mode=static,latency_aware=true
demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/onnxopt optimize models/digits_cnn.onnx -o out/digits_cnn.opt.onnx \
		--passes $(DEMO_PASSES) --calib models/digits_eval.npz
	$(VENV)/bin/onnxopt profile models/digits_cnn.onnx out/digits_cnn.opt.onnx --profile cpu-1t

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
