# Entry points that work on a fresh machine (set-up included):
#   make bench    the main job: python benchmarks/run.py (pass options as ARGS="--quick")
#   make test     the test suite, then the CUDA kernels' tests on the emulated device
#                 (make test-emulated) and under ASan/UBSan (make test-sanitized)
#   make lint     ruff check, ruff format --check, clang-format --dry-run on csrc/
# Set-up installs the pinned torch/torchvision and the test/benchmark/detector dependencies,
# then builds the extension in place (CUDA kernel included where nvcc is present, for the
# visible GPUs, or with none visible for every major architecture: see setup.py; set
# TORCH_CUDA_ARCH_LIST to choose).
# `python` where it exists, else `python3` (Debian and macOS ship only the latter).
PYTHON ?= $(shell command -v python >/dev/null 2>&1 && echo python || echo python3)
export MAX_JOBS ?= 2
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTENSION := focal_loss_ext/_C.abi3.so

# The clang-format binary that the pinned PyPI wheel ships, found through the same Python.
CLANG_FORMAT = $(PYTHON) -c "import clang_format, sys; sys.argv[0] = 'clang-format'; sys.exit(clang_format.clang_format())"
CSRC_FILES = $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')

.PHONY: install test test-emulated test-sanitized coverage-emulated bench lint format clean

.deps.stamp: pyproject.toml
	$(PYTHON) -m pip install -q $(TORCH_PINS)
	$(PYTHON) -m pip install -q "setuptools>=77" wheel ninja pytest hypothesis expecttest matplotlib tqdm \
		scikit-learn pycocotools ruff==0.17.6 clang-format==23.1.5
	touch $@

$(EXTENSION): .deps.stamp setup.py $(shell find csrc -type f)
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

install: $(EXTENSION)

test: install
	$(PYTHON) -m pytest -q
	$(MAKE) test-emulated test-sanitized

# The emulated-CUDA flavour (csrc/emu): built in a folder of its own and loaded in place of the
# in-place library through FOCAL_LOSS_EXT_LIBRARY, so the normal build is left alone. Its CPU
# kernels are the CUDA kernels, so every CPU-tensor test of the operators runs them: twice, with
# blocks in order on an H100-sized device and in reverse (then shuffled) on a one- and a
# seven-multiprocessor device, so persistent grids loop and block order cannot matter.
EMULATED_TESTS = tests --ignore=tests/detector --ignore=tests/test_benchmarks.py --ignore=tests/test_packaging.py \
	-p no:cacheprovider
emulated_lib = build/$(1)/focal_loss_ext/_C.abi3.so
build_emulated = FOCAL_LOSS_EXT_CUDA=0 FOCAL_LOSS_EXT_EMULATE_CUDA=1 $(2) \
	$(PYTHON) setup.py -q build_ext --build-lib build/$(1) --build-temp build/$(1)/obj

$(call emulated_lib,emulated): .deps.stamp setup.py $(shell find csrc -type f)
	$(call build_emulated,emulated,)

$(call emulated_lib,sanitized): .deps.stamp setup.py $(shell find csrc -type f)
	$(call build_emulated,sanitized,FOCAL_LOSS_EXT_SANITIZE=1)

$(call emulated_lib,coverage): .deps.stamp setup.py $(shell find csrc -type f)
	$(call build_emulated,coverage,FOCAL_LOSS_EXT_COVERAGE=1)

test-emulated: $(call emulated_lib,emulated)
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) $(PYTHON) -m focal_loss_ext.env | grep emulated
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=forward FOCAL_LOSS_EXT_EMU_SMS=132 \
		$(PYTHON) -m pytest -q $(EMULATED_TESTS)
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=reverse FOCAL_LOSS_EXT_EMU_SMS=1 \
		$(PYTHON) -m pytest -q $(EMULATED_TESTS)
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=random:7 FOCAL_LOSS_EXT_EMU_SMS=7 \
		$(PYTHON) -m pytest -q tests/test_kernel_paths.py tests/test_emulated_device.py -p no:cacheprovider

# The same build under AddressSanitizer and UBSan (an out-of-bounds access, a misaligned
# 16-byte load), on the kernel-path tests. Python itself is not instrumented, so the ASan
# runtime is preloaded, with libstdc++ (ASan's __cxa_throw interceptor needs it at start-up).
test-sanitized: $(call emulated_lib,sanitized)
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) \
		LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0 FOCAL_LOSS_EXT_EMU_SMS=1 \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_kernel_paths.py -k "cpu and (float32 or float16) and not strided"

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

# Which lines of csrc/cuda the emulated tests never run (gcov on a -O0 --coverage build of the
# emulated flavour, under both device settings of test-emulated); fails if there is one.
coverage-emulated: $(call emulated_lib,coverage)
	find build/coverage -name '*.gcda' -delete
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) FOCAL_LOSS_EXT_EMU_SMS=132 $(PYTHON) -m pytest -q $(EMULATED_TESTS)
	FOCAL_LOSS_EXT_LIBRARY=$(abspath $<) FOCAL_LOSS_EXT_EMU_SMS=1 FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=reverse \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_kernel_paths.py
	$(PYTHON) .ci/cuda_coverage.py build/coverage/obj
