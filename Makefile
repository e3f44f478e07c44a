# saescale — local front end. Quick start on a fresh Debian machine:
#   make demo    # installs what it needs, builds, trains the five variants, compares them, writes a report
#   make test    # installs what it needs, builds, runs ctest, the GPU-mapping check, pytest, the
#                # Slurm workflow end to end and the fuzzers
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
VENV ?= .venv
PYTHON ?= python3
CMAKE_ARGS ?=

DEBIAN_PACKAGES := build-essential cmake git libtrilinos-kokkos-dev libopenblas-dev \
  libopenmpi-dev openmpi-bin libcli11-dev nlohmann-json3-dev libtomlplusplus-dev \
  libgtest-dev libbenchmark-dev zlib1g-dev libbenchmark-tools python3-venv python3-pip clang libclang-rt-dev \
  slurm-wlm munge patchelf

.PHONY: all deps deps-system deps-python build test test-cpp test-cuda-rules test-gpu-check test-python test-slurm test-reframe test-fuzz test-interop deps-models demo bundle format clean help

all: build

help:
	@echo "make demo | test | build | deps | format | clean   (BUILD=$(BUILD), JOBS=$(JOBS))"

# Debian packages (as root on Debian: installed; elsewhere: what is missing is listed).
deps-system:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: Debian packages present"; \
	elif [ -f /etc/debian_version ] && [ "$$(id -u)" = 0 ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "deps: missing packages:$$missing"; \
	  echo "      install them (Debian/Ubuntu: sudo apt-get install$$missing) or the equivalents"; \
	  [ -f /etc/debian_version ] && exit 1 || true; \
	fi

# Python venv for analysis/ (pinned requirements), rebuilt when the requirements change.
$(VENV)/.stamp: analysis/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r analysis/requirements.txt
	touch $@

deps-python: $(VENV)/.stamp

deps: deps-system deps-python

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

build: deps-system $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test-cpp: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-python: deps-python
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/python

# The cluster workflow end to end on a real Slurm: a one-node cluster (munge, slurmctld, slurmd)
# started and stopped by the test, Makefile.cluster and runs/ as users run them (root; about
# 1-2 minutes). SAESCALE_SKIP_SLURM=1 skips it.
test-slurm: build deps-python
	BUILD=$(BUILD) VENV=$(VENV) bash tests/slurm/e2e.sh

# The ReFrame checks (runs/reframe) on the local Slurm through Makefile.cluster: two checks pass
# their references, a tightened reference fails (about 10 s). SAESCALE_SKIP_SLURM=1 skips it.
test-reframe: build deps-python
	BUILD=$(BUILD) VENV=$(VENV) bash tests/reframe/run.sh

# The CUDA rules that host compilers do not enforce (tools/cuda_rules.py; its planted violations
# are tests/python/test_cuda_rules.py). Seconds.
test-cuda-rules:
	$(PYTHON) tools/cuda_rules.py

# The GPU path without a GPU (about 5 minutes): a second build, one rank without MPI, whose kernels
# use their GPU mappings (teams over rows or latents, threads over d; kColumnTiles) on the host
# backend, is bundled (runs/gpu-bundle) and the GPU check (runs/gpu-check: the device tests and the
# study at host shapes) runs from the unpacked bundle (tests/bundle/check.sh).
GPU_MAPPING_BUILD ?= $(BUILD)-gpu-mapping
GPU_CHECK_TARGETS := saescale test_kernels test_sparse test_select test_model test_grad
test-gpu-check: deps
	cmake -S . -B $(GPU_MAPPING_BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DSAESCALE_GPU_MAPPING=ON \
	  -DSAESCALE_MPI=OFF -DSAESCALE_BUILD_BENCHMARKS=OFF $(CMAKE_ARGS) > /dev/null
	cmake --build $(GPU_MAPPING_BUILD) -j $(JOBS) --target $(GPU_CHECK_TARGETS)
	BUILD=$(GPU_MAPPING_BUILD) PYTHON=$(VENV)/bin/python bash tests/bundle/check.sh

# A self-contained tarball of a build made with -DSAESCALE_MPI=OFF (BUILD=build-cuda for the GPU):
# runs/gpu-bundle --help.
bundle:
	runs/gpu-bundle $(BUILD)

# The models environment (analysis/requirements-models.txt, pinned): sae-lens, PyTorch and
# transformers, for the SAELens interop test and harvesting activations. PyTorch's Linux wheels
# bring the CUDA libraries: about 5.5 GB, 1-2 minutes to install once.
MODELS_VENV ?= .venv-models
$(MODELS_VENV)/.stamp: analysis/requirements-models.txt
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/pip install -q --upgrade pip
	$(MODELS_VENV)/bin/pip install -q -r analysis/requirements-models.txt
	touch $@

deps-models: $(MODELS_VENV)/.stamp

# The real SAELens against saescale's weight folders both ways, and the harvest of a real model's
# activations (all-MiniLM-L6-v2, offline) that saescale then trains on (tests/interop).
# SAESCALE_SKIP_INTEROP=1 skips it.
test-interop: build
	@if [ -n "$$SAESCALE_SKIP_INTEROP" ]; then echo "interop: SKIPPED (SAESCALE_SKIP_INTEROP)"; else \
	  $(MAKE) --no-print-directory deps-models && \
	  HF_HUB_OFFLINE=1 SAESCALE=$(BUILD)/bin/saescale $(MODELS_VENV)/bin/python -m pytest -q \
	    -p no:cacheprovider tests/interop; fi

# libFuzzer targets of the file and config parsers (clang, ASan + UBSan), a bounded time each.
test-fuzz: deps-system
	FUZZ_SECONDS=$${FUZZ_SECONDS:-20} bash tests/fuzz/run.sh

test: deps test-cuda-rules test-cpp test-gpu-check test-python test-interop test-slurm test-reframe test-fuzz

demo: deps build
	PYTHON=$(VENV)/bin/python BUILD=$(BUILD) bash runs/demo.sh

format:
	find kernels src tests benchmarks -name '*.[ch]pp' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(GPU_MAPPING_BUILD) demo-output
