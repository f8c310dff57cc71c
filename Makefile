# Quick start:  make run   (set up, then run the main job on the built-in default dataset)
#               make test  (set up, then run the test suite)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Raw copies of public datasets (built into the registry on first use): a `shared/datasets`
# folder beside the checkout unless MOE_LOAD_BENCH_SOURCES says otherwise.
export MOE_LOAD_BENCH_SOURCES ?= $(abspath $(CURDIR)/../shared/datasets)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup run test lint bench leaderboard zoo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

run: setup
	$(PY) -m bench run --model lstm

test: setup  ## the test suite; -rs: every skipped test says what it misses
	$(PY) -m pytest -q -rs

lint: setup  ## style and static checks (ruff: pycodestyle, pyflakes, import order)
	$(PY) -m ruff check .

leaderboard: setup  ## rebuild the committed leaderboard/ from its result files (leaderboard/submissions/)
	$(PY) -m bench leaderboard --write

zoo: setup  ## compute the missing result files of the zoo (leaderboard/zoo.yaml; hours of CPU), score their placements, then rebuild
	$(PY) -m bench leaderboard --write --refresh
	$(PY) benchmarks/engines_placement.py --write
	$(PY) -m bench leaderboard --write
	$(PY) benchmarks/readme_outputs.py --write --tables

clean:
	rm -rf $(VENV) *.egg-info
