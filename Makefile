# The two commands a newcomer needs:
#   make demo   installs what is missing, builds, and runs the 2-rank demo fine-tune
#               (DATA=sst2 [SST2_DIR=dir]: on SST-2 instead of the generated reviews)
#   make test   installs what is missing, builds, and runs every test (ctest)
# Both return quickly when nothing has changed.

FTRAIN_HOME ?= $(HOME)/.cache/ftrain
VENV        ?= $(FTRAIN_HOME)/venv
PYTHON      := $(VENV)/bin/python
BUILD       ?= build
JOBS        ?= $(shell nproc)
CTEST_ARGS  ?=

.PHONY: all setup configure build build-programs test demo bench fuzz clean

all: build

setup:
	@FTRAIN_HOME=$(FTRAIN_HOME) scripts/setup.sh

$(BUILD)/CMakeCache.txt: scripts/requirements.txt | setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DFTRAIN_PYTHON=$(PYTHON)

configure: setup $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

# The demo needs only the two programs, not the test binaries.
build-programs: configure
	cmake --build $(BUILD) -j $(JOBS) --target ftrain ftrain-prep -- --no-print-directory

# Tests labelled `gpu` need a CUDA device; they run only where one is visible.
GPU_FILTER := $(shell nvidia-smi -L >/dev/null 2>&1 || echo "-LE gpu")

# After the tests, every skip the tests reported is listed with its reason
# (scripts/skip_summary.sh); make test keeps ctest's exit status.
test: build
	@cd $(BUILD) && { ctest --output-on-failure --timeout 900 $(GPU_FILTER) $(CTEST_ARGS); status=$$?; \
	  $(CURDIR)/scripts/skip_summary.sh Testing/Temporary/LastTest.log; \
	  if [ -n "$(GPU_FILTER)" ]; then echo "skip summary: tests labelled gpu not run: no GPU visible (nvidia-smi -L)"; fi; \
	  exit $$status; }

demo: build-programs
	@BUILD=$(BUILD) PYTHON=$(PYTHON) DATA="$(DATA)" SST2_DIR="$(SST2_DIR)" scripts/demo.sh

# ftrain beside the PyTorch loops it replaces, the data loader, checkpoints and start-up
# (bench/compare.py, docs/benchmarks.md). On a GPU: make bench BENCH_ARGS="--device cuda"
BENCH_ARGS ?=
bench: configure
	cmake --build $(BUILD) -j $(JOBS) --target ftrain ftrain-bench-loader ftrain-bench-checkpoint -- --no-print-directory
	BUILD=$(BUILD) $(PYTHON) bench/compare.py $(BENCH_ARGS)

# Every parser of untrusted files under libFuzzer with AddressSanitizer, for
# FUZZ_SECONDS each (tests/fuzz/, docs/fuzzing.md). A separate clang build in
# $(FUZZ_BUILD); each harness's corpus grows in $(FUZZ_BUILD)/corpus/<harness>, and a
# finding leaves its input there as crash-* or leak-*.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES := fuzz_safetensors fuzz_model_config fuzz_tokenizer fuzz_token_dataset fuzz_token_dataset_fields \
  fuzz_checkpoint fuzz_options
fuzz:
	@FTRAIN_HOME=$(FTRAIN_HOME) scripts/setup.sh --fuzz
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFTRAIN_FUZZ=ON \
	  -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DFTRAIN_PYTHON=$(PYTHON)
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_HARNESSES) -- --no-print-directory
	FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh $(FUZZ_HARNESSES)

clean:
	rm -rf $(BUILD)
