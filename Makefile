# The two commands of the README:
#   make run    set up and run a local three-replica cluster (foreground)
#   make test   set up and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SEEDS ?= 300

.PHONY: venv system test sim soak clean run proto

venv: $(VENV)/.installed

system:
	@bash scripts/setup-system.sh

$(VENV)/.installed: requirements.txt
	@bash scripts/setup-system.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

test: venv system proto
	$(PY) -m pytest -q tests
	$(PY) -m sim --seeds $(SEEDS) --jobs 2

# make sim SEEDS=N runs seeds 1..N; make sim SEED=s replays one seed verbosely.
sim: venv
ifdef SEED
	$(PY) -m sim --seed $(SEED) --verbose
else
	$(PY) -m sim --seeds $(SEEDS) --jobs 2
endif

soak: venv
	$(PY) -m sim --seeds 100000 --jobs 2

# Generated gRPC code (proto/gen/, not committed); also made on first import when stale.
proto: venv
	$(PY) -m ledger.api_proto

# A local three-replica cluster (one city, three data centers) in the foreground,
# with a live status view; Ctrl-C stops it. Data and logs: data/one-city/.
TOPOLOGY ?= one-city
run: venv proto
	$(PY) -m cluster run $(TOPOLOGY)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Chaos suite (chaos/): real replicas under faults, checked histories, reports under data/chaos/.
# chaos-quick: a short schedule on one topology, ends with one line "chaos: valid=<true|false> ...".
# chaos: every shipped topology under every fault, survival matrix in data/chaos/survival.html.
# NET=loopback|netns (default: netns as root, else loopback).
.PHONY: chaos chaos-quick
chaos-quick: venv
	$(PY) -m chaos quick $(if $(NET),--network $(NET))

chaos: venv
	$(PY) -m chaos full $(if $(NET),--network $(NET))

# Benchmarks (issue 8): a local three-replica cluster of its own, fsync on.
# Prints a table; JSON figures to $(BENCH_JSON). bench-quick: under two minutes.
BENCH_JSON ?= bench/results.json
.PHONY: bench bench-quick
bench: venv proto
	BENCH_JSON=$(BENCH_JSON) $(PY) -m cluster.bench

bench-quick: venv proto
	BENCH_JSON=$(BENCH_JSON) $(PY) -m cluster.bench --quick

# Transfer throughput of one replica's storage + state machine as the accounts
# grow from 10,000 to 10,000,000 (about 3 GB of disk, tens of minutes).
.PHONY: bench-accounts
bench-accounts: venv
	$(PY) bench/accounts_scaling.py --out bench/accounts_scaling.json
