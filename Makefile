# Entry points; the scripts do the work (and create .venv/ when it is missing).
PY := .venv/bin/python

.PHONY: test run bench bench-quick

test:
	./scripts/test.sh

run:
	./scripts/run.sh

# Every benchmark, one combined JSON (results/bench.json) and a summary table.
bench:
	$(PY) bench/run_all.py --json results/bench.json

bench-quick:
	$(PY) bench/run_all.py --quick --json results/bench-quick.json
