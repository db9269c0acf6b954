# Entry points that work on a fresh machine (set-up included):
#   make bench    the main job: python benchmarks/run.py (pass options as ARGS="--quick")
#   make test     the test suite
#   make lint     ruff check, ruff format --check, clang-format --dry-run on csrc/
# Set-up installs the pinned torch/torchvision and the test/benchmark/detector dependencies,
# then builds the extension in place (CUDA kernel included where nvcc is present).
# `python` where it exists, else `python3` (Debian and macOS ship only the latter).
PYTHON ?= $(shell command -v python >/dev/null 2>&1 && echo python || echo python3)
export TORCH_CUDA_ARCH_LIST ?= 9.0
export MAX_JOBS ?= 2
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTENSION := focal_loss_ext/_C.abi3.so

# The clang-format binary that the pinned PyPI wheel ships, found through the same Python.
CLANG_FORMAT = $(PYTHON) -c "import clang_format, sys; sys.argv[0] = 'clang-format'; sys.exit(clang_format.clang_format())"
CSRC_FILES = $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')

.PHONY: install test bench lint format clean

.deps.stamp: pyproject.toml
	$(PYTHON) -m pip install -q $(TORCH_PINS)
	$(PYTHON) -m pip install -q setuptools wheel ninja pytest hypothesis expecttest matplotlib tqdm \
		scikit-learn pycocotools ruff==0.17.6 clang-format==23.1.5
	touch $@

$(EXTENSION): .deps.stamp setup.py $(shell find csrc -type f)
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

install: $(EXTENSION)

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/run.py $(ARGS)

lint: .deps.stamp
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(CLANG_FORMAT) --dry-run -Werror $(CSRC_FILES)

# Rewrites the files in place so that `make lint` passes.
format: .deps.stamp
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .
	$(CLANG_FORMAT) -i $(CSRC_FILES)

clean:
	rm -rf build *.egg-info $(EXTENSION) .deps.stamp
