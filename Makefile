# lskd: the README's two commands are `make demo` and `make test`; both run `make setup` first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lskd-setup-stamp
# The GPU check runs on a lent GPU machine's own Python (no venv, no install): see docs/benchmarks.md.
GPU_PY ?= python3

.PHONY: setup demo demo-translation lint test test-fast bench mutants gpu-check clean

setup: $(STAMP)

# Re-run set-up only when what it installs changes: a second `make setup` takes seconds.
$(STAMP): pyproject.toml setup.py constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	@touch $(STAMP)

# the demo preset with 3 teachers per alpha and the entropy-matched students (issue 23, docs/study.md)
demo: setup
	$(PY) -m lskd_core.study --preset demo-teachers --out runs/demo

# Table 5 on the CPU: En->De on the offline Ding corpus (Debian trans-de-en), fairseq teachers and students.
demo-translation: setup
	$(PY) -m lskd_core.study --preset translation-demo --out runs/translation-demo

# ruff (pyflakes, bugbear, import order, complexity) and mypy on lskd_core run before the tests,
# so CI enforces them.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench: setup
	$(PY) bench/run_all.py --quick

# Mutation testing of the verdict, statistics, run-hash and teacher-cache code (cosmic-ray; not in CI;
# docs/testing.md gives the run times). Continues the sessions under runs/mutants; a bounded run:
# make mutants MUTANTS_ARGS="--sample 100 --max-minutes 30" (a seeded sample of each module's mutants).
MUTANTS_ARGS ?=
mutants: setup
	$(VENV)/bin/pip install -q -e ".[mutation]"
	$(PY) scripts/mutants.py --jobs 2 --resume $(MUTANTS_ARGS)

# No `setup` dependency: the GPU machine gets the working tree only (scripts/gpu_check.py --help).
gpu-check:
	PYTHONPATH=. $(GPU_PY) scripts/gpu_check.py

clean:
	rm -rf runs .pytest_cache
