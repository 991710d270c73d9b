# Two entry points (see README): `make demo` sets up and upscales sample photos; `make test` runs the tests.
PYTHON      ?= python3
VENV        ?= .venv
# torch==2.13.0 by default. On an ordinary Linux box PyPI's torch is a CUDA build (~2.7 GB); for the CPU build
# point TORCH_INDEX at PyTorch's CPU wheels: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# GPU users: make setup TORCH="torch" CONSTRAINTS=/dev/null (or their own pins).
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
CONSTRAINTS ?= constraints.txt
SHARED      ?= ../shared
BIN         := $(VENV)/bin

# Official checkpoints are found through the weights search path; use the workspace copies when present.
ifneq ($(wildcard $(SHARED)/weights),)
export DSCLORA_WEIGHTS_DIR ?= $(abspath $(SHARED)/weights)
endif

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[test]"
	# spandrel is a reference for the export tests only; without its deps (it pulls torchvision otherwise)
	$(BIN)/python -m pip install -q --no-deps "spandrel==0.4.2"
	touch $@

demo: setup
	$(BIN)/dsclora demo -o out/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks studies
	$(BIN)/ruff format --check src tests benchmarks studies

clean:
	rm -rf $(VENV) out .pytest_cache
