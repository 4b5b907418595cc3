# Every target installs what it needs on first use: apt packages, a venv, the package (which compiles
# the native core through cffi).  `make test` and `make demo` are the two commands a newcomer needs;
# `make check` runs the same tests on a tree that is already installed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# The C++ client test needs g++ and Debian's gRPC; the deployment tests need docker-compose (it checks a
# compose file offline), iproute2 (network namespaces), openssl (certificates) and memcached; the Redis
# baseline is for benchmarks only.
APT_PACKAGES := libpmem2-dev gcc g++ make pkg-config python3-venv libgrpc++-dev protobuf-compiler-grpc \
	docker-compose iproute2 openssl memcached python3-pyverbs rdma-core ibverbs-providers
BENCH_APT_PACKAGES := redis-server
# The coverage-guided fuzzers: Debian's clang and its libFuzzer runtime, of one version.
FUZZ_APT_PACKAGES := clang-14 libclang-rt-14-dev
FUZZ_CC := clang-14
NATIVE_SRC := $(wildcard native/*.c native/*.h)
ASAN_TEST := build/native-asan/store_test
FUZZ_HARNESSES := fuzz_wire_request fuzz_table_file
FUZZ_BUILD := build/native-fuzz
# Seconds per harness: `make fuzz` runs long, `make test` a bounded while.
FUZZ_SECONDS ?= 300
FUZZ_TEST_SECONDS ?= 25
DATA_DIR ?= data

.PHONY: install system-deps bench-deps fuzz-deps proto test test-native test-fuzz test-python typecheck check \
	check-native check-fuzz check-python check-types fuzz fuzz-corpus demo store-demo bench bench-quick \
	container-deps compose wheelhouse image up up-training down test-containers check-containers pyverbs-link clean

install: $(STAMP)

# Installs the apt packages of $(1) that are missing.
apt_install = missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

system-deps:
	@$(call apt_install,$(APT_PACKAGES))

bench-deps:
	@$(call apt_install,$(BENCH_APT_PACKAGES))

fuzz-deps:
	@$(call apt_install,$(FUZZ_APT_PACKAGES))

# The package with every extra (pyproject.toml): train (PyTorch, matplotlib), rdma (pymemcache), bench,
# test (pytest, mypy).  recbole is installed without its dependencies: MovieLens-100k ships inside its wheel.
$(STAMP): pyproject.toml setup.py native/build_store.py $(NATIVE_SRC) | system-deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[train,rdma,bench,test]'
	$(VENV)/bin/pip install -q --no-deps recbole==1.2.1
	$(MAKE) --no-print-directory pyverbs-link
	touch $@

# Debian's pyverbs in the venv: a .pth adds a directory holding only a link to the pyverbs package,
# when its extension modules carry this interpreter's ABI tag (else the RDMA path stays off).
PYVERBS_DIR := /usr/lib/python3/dist-packages/pyverbs
pyverbs-link:
	@suffix=$$($(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
	if [ -e "$(PYVERBS_DIR)/device$$suffix" ]; then \
		mkdir -p $(VENV)/system-pyverbs && ln -sfn $(PYVERBS_DIR) $(VENV)/system-pyverbs/pyverbs && \
		echo "$(abspath $(VENV))/system-pyverbs" > "$$site/embps-system-pyverbs.pth"; \
	else \
		rm -f "$$site/embps-system-pyverbs.pth"; \
		echo "note: Debian's pyverbs does not match this Python ($$suffix); the RDMA data path stays off"; \
	fi

# The same C sources under AddressSanitizer and UBSan, driven by a C test program (gcc and libpmem2-dev
# come from system-deps).
$(ASAN_TEST): $(NATIVE_SRC) native/tests/store_test.c
	mkdir -p $(@D)
	gcc -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
		-fno-sanitize-recover=all -Inative native/*.c native/tests/store_test.c -lpmem2 -lm -lpthread -o $@

# Generated Python for protos/embps/v1 is the package embps.v1 (services/embps/v1); a test fails
# when it is stale.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=services --pyi_out=services \
		--grpc_python_out=services protos/embps/v1/*.proto

test-native: system-deps
	@$(MAKE) --no-print-directory check-native

# libFuzzer harnesses (native/fuzz/) over the same C sources under ASan and UBSan.  Each run starts
# from the committed seeds (native/fuzz/corpus/<harness>, written by `make fuzz-corpus`) and keeps
# what it learns in $(FUZZ_BUILD)/corpus/<harness>; a crash leaves its input in $(FUZZ_BUILD) and
# fails the target: fix it, and add the input to the seeds as a regression.
$(FUZZ_BUILD)/%: native/fuzz/%.c native/fuzz/scratch_dir.h $(NATIVE_SRC) | fuzz-deps
	mkdir -p $(@D)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all -Inative native/*.c $< -lpmem2 -lm -lpthread -o $@

# $(1): seconds per harness.
run_fuzzers = for h in $(FUZZ_HARNESSES); do \
		mkdir -p $(FUZZ_BUILD)/corpus/$$h && \
		$(FUZZ_BUILD)/$$h -max_total_time=$(1) -timeout=120 -max_len=16384 -print_final_stats=1 \
			-artifact_prefix=$(FUZZ_BUILD)/$$h- $(FUZZ_BUILD)/corpus/$$h native/fuzz/corpus/$$h || exit 1; \
	done

test-fuzz: fuzz-deps
	@$(MAKE) --no-print-directory check-fuzz

check-fuzz: $(addprefix $(FUZZ_BUILD)/,$(FUZZ_HARNESSES))
	@$(call run_fuzzers,$(FUZZ_TEST_SECONDS))

fuzz: $(addprefix $(FUZZ_BUILD)/,$(FUZZ_HARNESSES))
	@$(call run_fuzzers,$(FUZZ_SECONDS))

fuzz-corpus: $(STAMP)
	PYTHONPATH=services $(PY) native/fuzz/make_corpus.py

# TorchRec, the training baseline: torchrec 1.8 loads on torch 2.13 only without its declared deps.
TORCHREC_STAMP := $(VENV)/.torchrec
$(TORCHREC_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q torch==2.13.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 pyre-extensions==0.0.32
	$(VENV)/bin/pip install -q --no-deps torchrec==1.8.0
	touch $@

test-python: $(STAMP) $(TORCHREC_STAMP)
	@$(MAKE) --no-print-directory check-python

typecheck: $(STAMP)
	@$(MAKE) --no-print-directory check-types

# The one command for a fresh machine: installs what the tests need, then the native test, the fuzzers
# (a bounded run), pytest, mypy.
test: system-deps fuzz-deps $(STAMP) $(TORCHREC_STAMP)
	@$(MAKE) --no-print-directory check

# The tests and the type check on an installed tree: installs nothing and never calls apt or pip.  PY
# names the interpreter that has the package and its test extra (default: the venv of `make install`).
check: check-native check-fuzz check-python check-types

check-native: $(ASAN_TEST)
	PMEM2_FORCE_GRANULARITY=CACHE_LINE ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 $(ASAN_TEST)

# The container test is `make test-containers`, with a Docker engine.
check-python:
	$(PY) -m pytest tests --ignore=tests/containers --durations=15

check-types:
	$(PY) -m mypy

# The main job: DLRM on synthetic Criteo-like data, 2 shards, the oracle cacher, 2 gateways, 2 trainers.
demo: $(STAMP)
	$(VENV)/bin/embps train --data-dir $(DATA_DIR)/train-demo

store-demo: $(STAMP)
	$(VENV)/bin/embps store-demo --data-dir $(DATA_DIR)/store-demo

bench: $(STAMP) $(TORCHREC_STAMP) bench-deps
	$(PY) bench/run_all.py

bench-quick: $(STAMP) $(TORCHREC_STAMP) bench-deps
	$(PY) bench/run_all.py --quick

# ---- containers (deploy/Dockerfile, README "Deployment") ------------------------------------------
# docker-compose.yml and deploy/job.toml are generated from deploy/cluster.toml, the one source of shard
# count and addresses; a test checks they are in sync.  Debian's client (/usr/bin/docker, BuildKit built
# in) is preferred over another one on the PATH; compose is v2 (`docker compose`) where the client has it,
# else Debian's docker-compose 1.29.
DOCKER ?= $(firstword $(wildcard /usr/bin/docker) docker)
ifndef COMPOSE
COMPOSE := $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo "$(DOCKER) compose" || echo docker-compose)
endif
COMPOSE_YML ?= docker-compose.yml
# The images: $(IMAGE_PREFIX)-shard, -training, -memcached at $(IMAGE_TAG) (`embps compose --image-prefix --tag`).
IMAGE_PREFIX ?= embps
IMAGE_TAG ?= latest
IMAGE_ROLES := shard training memcached
# Empty: debian:bookworm-slim if it can be pulled, else a local debootstrap base (deploy/base-image.sh).
BASE_IMAGE ?=
WHEELHOUSE := build/wheelhouse
UP_TIMEOUT ?= 180
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

# Debian's engine (docker.io) and docker-compose only where no engine or compose is installed (a host with
# Docker's own packages keeps them); debootstrap for a base without a registry.
container-deps:
	@packages=debootstrap; \
	command -v dockerd >/dev/null || packages="$$packages docker.io"; \
	$(DOCKER) compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || packages="$$packages docker-compose"; \
	$(call apt_install,$$packages)

compose: $(STAMP)
	$(VENV)/bin/embps compose --cluster deploy/cluster.toml --out docker-compose.yml

# The wheels the images install offline (deploy/wheelhouse.py; kept in build/ between runs).
wheelhouse:
	@$(PYTHON) deploy/wheelhouse.py $(WHEELHOUSE)

# Builds every role's image; unchanged layers come from the engine's cache.
image: container-deps wheelhouse
	@base=$$(DOCKER=$(DOCKER) deploy/base-image.sh $(BASE_IMAGE)) && mkdir -p build/logs && \
	for role in $(IMAGE_ROLES); do \
		image=$(IMAGE_PREFIX)-$$role:$(IMAGE_TAG); start=$$SECONDS; \
		DOCKER_BUILDKIT=1 $(DOCKER) build -f deploy/Dockerfile --target $$role -t $$image \
			--build-arg BASE_IMAGE=$$base --build-arg VERSION=$(VERSION) \
			--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
			--progress plain . >build/logs/image-$$role.log 2>&1 \
			|| { tail -40 build/logs/image-$$role.log; echo "building $$image failed: build/logs/image-$$role.log"; exit 1; }; \
		echo "built $$image: $$($(DOCKER) image inspect -f '{{.Size}}' $$image | awk '{printf "%.0f MB", $$1/1e6}')," \
			"$$((SECONDS - start)) s (log: build/logs/image-$$role.log)"; \
	done; \
	$(DOCKER) image prune -f --filter label=io.embps.role >/dev/null   # the earlier builds these tags replaced

# memcached and the shards, healthy (the training profile's services are not started).
up: image
	$(COMPOSE) -f $(COMPOSE_YML) up -d --remove-orphans
	@DOCKER=$(DOCKER) deploy/wait-healthy.sh $(UP_TIMEOUT) $$($(COMPOSE) -f $(COMPOSE_YML) ps -q)

# And the training job: the oracle cacher, trainer gateways and trainers (rank 0 writes metrics.json to the
# training-out volume).  Compose starts each after the services it depends on are healthy.
up-training: image
	$(COMPOSE) -f $(COMPOSE_YML) --profile training up -d
	@echo "training: $(COMPOSE) -f $(COMPOSE_YML) logs -f trainer-0"

# Named volumes (the PM files) are kept; `down -v` would delete them.
down:
	$(COMPOSE) -f $(COMPOSE_YML) --profile training --profile admin down --remove-orphans

# The cluster in containers (tests/containers): images, health, training, a killed shard, down and up,
# scaling.  Uses the engine DOCKER_HOST reaches, else starts a private dockerd for the run.
test-containers: container-deps $(STAMP)
	@DOCKER=$(DOCKER) deploy/docker-engine.sh $(MAKE) --no-print-directory check-containers DOCKER=$(DOCKER)

check-containers:
	DOCKER=$(DOCKER) COMPOSE="$(COMPOSE)" $(PY) -m pytest tests/containers -x -v -s --durations=0

clean:
	rm -rf build $(VENV) services/embps/store/_native*.so *.egg-info
