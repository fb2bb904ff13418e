# make demo  : set up and run the main job on real photos (ingest, info, lookup, train, eval, predict)
# make test  : set up and run the whole test suite (what CI runs)
# make test-fast : the suite without the tests marked slow (over ~5 s each), in a few minutes
# make lint  : ruff format --check, ruff check, then the type checker (make typecheck: mypy)
VENV  ?= .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
DATA  ?= ../shared/data/flowers12
STORE ?= demo-store
RUNS  ?= runs
SPLIT ?= --use-split                       # honour train/ and test/ folders; empty: 5 plain folds
QUERY ?= $(DATA)/test/daisy/image_0804.jpg
PHOTOS ?= $(DATA)/test/sunflower/image_0723.jpg $(DATA)/test/iris/image_0406.jpg

.PHONY: setup demo test test-fast lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # the CPU wheel; an unpinned torch pulls CUDA builds
	$(PY) -m pip install -q -e '.[dev,ray]'   # ray: the --engine ray extra (tests/test_ray.py)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/embedstore ingest $(DATA) --store $(STORE)
	$(BIN)/embedstore info --store $(STORE)
	$(BIN)/embedstore split --store $(STORE) --folds 5 $(SPLIT)
	$(BIN)/embedstore lookup $(QUERY) --store $(STORE) --k 5
	$(BIN)/heads train --store $(STORE) --fold all --head mlp --epochs 40 --batch-size 128 --unknown energy-knn --out $(RUNS)/mlp --overwrite
	$(BIN)/heads eval $(RUNS)/mlp
	$(BIN)/heads predict $(RUNS)/mlp $(PHOTOS) --top-k 3

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck

typecheck: setup
	$(BIN)/mypy                                # files and settings: [tool.mypy] in pyproject.toml

bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/heads.py
	$(PY) benchmarks/knn.py
	$(PY) benchmarks/quality_checks.py
	$(PY) benchmarks/ingest_ray.py
	$(PY) benchmarks/texts.py --threads 1

clean:
	rm -rf $(STORE) $(RUNS)
