# Two commands a new user needs (see README):
#   make run    install everything, then `accelerate launch scripts/unlearn.py` (Fashion-MNIST)
#   make test   install everything, then the test suite (what CI runs)
# Both are idempotent: the install step reruns only when pyproject.toml, setup.py or csrc/ change.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR  ?= /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=
STAMP       := $(VENV)/.kga_fast-installed
NATIVE_SRC  := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
CUDA_HOME   ?= $(shell test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda)
export CUDA_HOME

.PHONY: install run test bench lint data clean

install: $(STAMP) data

$(STAMP): pyproject.toml setup.py $(NATIVE_SRC)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q setuptools wheel ninja pybind11
	$(VENV)/bin/python -m pip install -q --no-build-isolation -e '.[dev]'
	$(VENV)/bin/python -c "import kga_fast, kga_fast.native as n; print('kga_fast', kga_fast.__version__, '| native:', n.describe())"
	touch $(STAMP)

# The embedded default dataset comes from Debian's package dataset-fashion-mnist.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing from $(FMNIST_DIR): install the Debian package dataset-fashion-mnist as root" >&2; exit 1; fi; \
	fi

run: install
	$(VENV)/bin/accelerate launch scripts/unlearn.py

test: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python -m pytest bench -q --benchmark-enable -s

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf build *.egg-info kga_fast/*.so $(STAMP)
