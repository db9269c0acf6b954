# Entry points that work on a fresh machine (set-up included):
#   make bench    the main job: python benchmarks/run.py (pass options as ARGS="--quick")
#   make test     the test suite, then the CUDA kernels' tests on the emulated device
#                 (make test-emulated) and under ASan/UBSan (make test-sanitized)
#                 (bash .ci/run: the whole CI, lint, CUDA build and the source distribution too)
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
	$(PYTHON) -m pip install -q "setuptools>=77" wheel ninja pytest pytest-xdist hypothesis expecttest matplotlib tqdm \
		scikit-learn pycocotools ruff==0.17.6 clang-format==23.1.5
	touch $@

$(EXTENSION): .deps.stamp setup.py $(shell find csrc -type f)
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

install: $(EXTENSION)

# `make test`: the suite on the in-place build, then the CUDA kernels on the emulated device,
# plain (test-emulated) and under ASan/UBSan (test-sanitized). Each step prints its wall time.
# TEST_JOBS=N runs the tests in N processes (pytest-xdist); the default is one: on 2 shared cores
# two processes, each with torch's two threads, took longer than one (the kernel-path pass on one
# multiprocessor: 150 s with -n 2, 90 s in one process). pytest's exit status 5 (it collected
# nothing, e.g. a selection that a build skips whole) is not a failure.
TEST_JOBS ?= 1
pytest = $(PYTHON) -m pytest -q -p no:cacheprovider $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS)) $(1) \
	|| [ $$? -eq 5 ]
# $(call timed,NAME,COMMAND): echoes and runs COMMAND, then prints "[time] NAME: 12 s".
timed = @echo '$(2)'; start=$$(date +%s); $(2); status=$$?; echo "[time] $(1): $$(( $$(date +%s) - start )) s"; \
	exit $$status

test: install
	$(call timed,suite,$(call pytest,))
	$(MAKE) test-emulated test-sanitized

# The emulated-CUDA flavour (csrc/emu): built in a folder of its own and loaded in place of the
# in-place library through FOCAL_LOSS_EXT_LIBRARY, so the normal build is left alone. Its CPU
# kernels are the CUDA kernels, so every CPU-tensor test of the operators runs them, with blocks
# in order on an H100-sized device. The kernel-path and bit tests (every load path, enough rows
# that a persistent grid loops) run again in reverse on one multiprocessor and shuffled on
# seven, so that grid-stride carries are exercised and block order cannot matter. Tests that
# set the device themselves (test_emulated_device.py) or run no kernel of their own (packaging,
# the CPU instruction-set builds, the detector, the benchmark) run once.
EMULATED_TESTS = tests --ignore=tests/detector --ignore=tests/test_benchmarks.py --ignore=tests/test_packaging.py \
	--ignore=tests/test_cpu_isa.py --ignore=tests/test_cpu_isa_cases.py
DEVICE_TESTS = tests/test_kernel_paths.py tests/test_bits.py
emulated_lib = build/$(1)/focal_loss_ext/_C.abi3.so
build_emulated = FOCAL_LOSS_EXT_CUDA=0 FOCAL_LOSS_EXT_EMULATE_CUDA=1 $(2) \
	$(PYTHON) setup.py -q build_ext --build-lib build/$(1) --build-temp build/$(1)/obj

$(call emulated_lib,emulated): .deps.stamp setup.py $(shell find csrc -type f)
	$(call timed,emulated build,$(call build_emulated,emulated,))

$(call emulated_lib,sanitized): .deps.stamp setup.py $(shell find csrc -type f)
	$(call timed,sanitized build,$(call build_emulated,sanitized,FOCAL_LOSS_EXT_SANITIZE=1))

$(call emulated_lib,coverage): .deps.stamp setup.py $(shell find csrc -type f)
	$(call build_emulated,coverage,FOCAL_LOSS_EXT_COVERAGE=1)

use_emulated = FOCAL_LOSS_EXT_LIBRARY=$(abspath $(call emulated_lib,emulated))
test-emulated: $(call emulated_lib,emulated)
	$(use_emulated) $(PYTHON) -m focal_loss_ext.env | grep emulated
	$(call timed,emulated 132 SMs forward,$(use_emulated) FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=forward \
		FOCAL_LOSS_EXT_EMU_SMS=132 $(call pytest,$(EMULATED_TESTS)))
	$(call timed,emulated 1 SM reverse,$(use_emulated) FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=reverse \
		FOCAL_LOSS_EXT_EMU_SMS=1 $(call pytest,$(DEVICE_TESTS)))
	$(call timed,emulated 7 SMs shuffled,$(use_emulated) FOCAL_LOSS_EXT_EMU_BLOCK_ORDER=random:7 \
		FOCAL_LOSS_EXT_EMU_SMS=7 $(call pytest,$(DEVICE_TESTS)))

# The same build under AddressSanitizer and UBSan (an out-of-bounds access, a misaligned
# 16-byte load), on the kernel-path tests that reach every kernel, dtype and kind of access:
# every dtype with rows shorter than a 16-byte pack (K = 7), a whole number of packs (80) and a
# tail (81), at an aligned and an unaligned start, for the sigmoid losses and scale_grad_; the
# softmax loss (some 10 s a test here, its rows are warps that shuffle) on the aligned pack path
# in every dtype, on rows with a tail and on unaligned short rows in each element size, not again
# for bfloat16 (the size of float16); the loss written in float32 for half inputs (autocast), per
# element and reduced. Python itself is not instrumented, so the ASan runtime is preloaded, with
# libstdc++ (ASan's __cxa_throw interceptor needs it at start-up).
SANITIZED_TESTS = tests/test_kernel_paths.py -k "loss_in_opmath and not mean or cpu and not strided and (scale_grad \
	or empty or (sigmoid- or star-) and (-7- or -80- or -81-) or softmax-80- and contiguous \
	or not bfloat16 and (softmax-81- and contiguous or softmax-7- and offset))"
use_sanitized = FOCAL_LOSS_EXT_LIBRARY=$(abspath $(call emulated_lib,sanitized)) ASAN_OPTIONS=detect_leaks=0 \
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)"
test-sanitized: $(call emulated_lib,sanitized)
	$(call timed,sanitized,$(use_sanitized) FOCAL_LOSS_EXT_EMU_SMS=1 $(call pytest,$(SANITIZED_TESTS)))

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
