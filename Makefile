# saescale — local front end. Quick start on a fresh Debian machine:
#   make demo    # installs what it needs, builds, trains ReLU and JumpReLU, prints a comparison
#   make test    # installs what it needs, builds, runs ctest and pytest
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
VENV ?= .venv
PYTHON ?= python3
CMAKE_ARGS ?=

DEBIAN_PACKAGES := build-essential cmake git libtrilinos-kokkos-dev libopenblas-dev \
  libopenmpi-dev openmpi-bin libcli11-dev nlohmann-json3-dev libtomlplusplus-dev \
  libgtest-dev libbenchmark-dev libbenchmark-tools python3-venv python3-pip clang libclang-rt-dev \
  slurm-wlm munge

.PHONY: all deps deps-system deps-python build test test-cpp test-gpu-mapping test-python test-slurm test-fuzz demo format clean help

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

# The kernels' GPU mappings (teams over rows or latents, threads over d; kColumnTiles) compiled
# for the host backend and tested there: this machine's Kokkos has no GPU backend, so otherwise
# that code would never be compiled or run before it reaches a GPU (about 3 minutes).
GPU_MAPPING_BUILD ?= $(BUILD)-gpu-mapping
GPU_MAPPING_TESTS := test_kernels test_sparse test_select test_model
test-gpu-mapping: deps-system
	cmake -S . -B $(GPU_MAPPING_BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DSAESCALE_GPU_MAPPING=ON \
	  -DSAESCALE_BUILD_BENCHMARKS=OFF $(CMAKE_ARGS) > /dev/null
	cmake --build $(GPU_MAPPING_BUILD) -j $(JOBS) --target $(GPU_MAPPING_TESTS)
	set -e; for t in $(GPU_MAPPING_TESTS); do $(GPU_MAPPING_BUILD)/bin/$$t --gtest_brief=1; done

# libFuzzer targets of the file and config parsers (clang, ASan + UBSan), a bounded time each.
test-fuzz: deps-system
	FUZZ_SECONDS=$${FUZZ_SECONDS:-20} bash tests/fuzz/run.sh

test: deps test-cpp test-gpu-mapping test-python test-slurm test-fuzz

demo: deps build
	PYTHON=$(VENV)/bin/python BUILD=$(BUILD) bash runs/demo.sh

format:
	find kernels src tests -name '*.[ch]pp' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(GPU_MAPPING_BUILD) demo-output
