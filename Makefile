# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install torch==2.13.0 first (the local CPU wheel;
# any other spec pulls GBs of CUDA packages), then difftract with its test extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/difftract demo --out demo_out --force

# Two workers (pytest-xdist), each test file on one of them with its fixtures: the suite took
# 8:38 in one process and 5:47 in two on a 2-core machine. `.venv/bin/python -m pytest` alone
# still runs it in one process.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Every benchmark runs with --check (exit 1 on a missed target or an unmeasured reference);
# all of them run, then the target fails if any did, naming them.
bench: $(STAMP)
	@failed=""; for b in benchmarks/bench_*.py; do echo "== $$b --check"; \
	  $(PY) $$b --check || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed --check:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) demo_out .pytest_cache build src/*.egg-info
