# Two commands for a fresh machine:
#   make demo   set everything up, then run the main job (the `quick` benchmark suite)
#   make test   set everything up, then run the tests
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test install data bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# the CPU wheel of torch first, pinned, so nothing can pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

# Fashion-MNIST comes from the Debian package dataset-fashion-mnist; the demo falls back to
# scikit-learn's digits when it cannot be installed.
data:
	@if [ ! -e $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist (not root?); the demo will use digits"; \
	fi

demo: install data
	$(VENV)/bin/prunelab bench

test: install data
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs
