# Entry points that work on a fresh machine (set-up included):
#   make bench    the main job: python benchmarks/run.py (pass options as ARGS="--quick")
#   make test     the test suite
# Set-up installs the pinned torch/torchvision and the test/benchmark/detector dependencies,
# then builds the extension in place (CUDA kernel included where nvcc is present).
PYTHON ?= python
export TORCH_CUDA_ARCH_LIST ?= 9.0
export MAX_JOBS ?= 2
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTENSION := focal_loss_ext/_C.abi3.so

.PHONY: install test bench clean

.deps.stamp: pyproject.toml
	$(PYTHON) -m pip install -q $(TORCH_PINS)
	$(PYTHON) -m pip install -q setuptools wheel ninja pytest hypothesis expecttest matplotlib tqdm \
		scikit-learn pycocotools ruff
	touch $@

$(EXTENSION): .deps.stamp setup.py $(shell find csrc -type f)
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

install: $(EXTENSION)

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/run.py $(ARGS)

clean:
	rm -rf build *.egg-info $(EXTENSION) .deps.stamp
