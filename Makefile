# The two commands of the README: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test test-fast bench bench-peers bench-heavy mutants setup redis-server test-tools model model-ts cpp clean

run: setup
	@if [ "$(PROXY)" = nginx ]; then scripts/ensure-nginx.sh; fi
	$(PY) -m stack

# Test files run in parallel (pytest-xdist, a file's tests in one process): the suite waits on real processes
# about half the time, so one process more than there are cores, at most 4 (measured: docs/tests.md).
TEST_PROCESSES ?= $(shell n=$$(($$(nproc) + 1)); echo $$((n > 4 ? 4 : n)))
test: setup test-tools
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile --durations=15

# The unit tests alone (tests/unit: in-process, fakeredis): the quick loop while editing.
test-fast: setup
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile tests/unit

# Model and pipeline ceilings, then the service at saturation, half load and unloaded: one markdown table.
bench: setup
	$(PY) -m scripts.bench

# Our service beside TorchServe 0.12 (stock image_classifier on TorchScript; ONNX Runtime handler), LitServe and
# BentoML, each installed from PyPI into its own venv under .bench-peers/ and checked against eager PyTorch's
# answers first: scripts/bench_peers/. ARGS passes options, e.g. ARGS="--peers ours,litserve --seconds 3".
bench-peers: setup
	$(PY) -m scripts.bench_peers --python $(PYTHON) $(ARGS)

# Break each guarantee on purpose and check a test fails: a named list of mutants, then mutmut's (scripts/mutants.py).
mutants: setup test-tools
	$(PY) -m scripts.mutants

# A user's heavy model (ResNeXt-101 in the classic checkpoint format) at batch 8, 16 and 32: scripts/bench_heavy.py.
bench-heavy: setup
	$(PY) -m scripts.bench_heavy

setup: $(VENV)/.installed redis-server model

$(VENV)/.installed: requirements.txt requirements-worker-onnx.txt requirements-api.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

redis-server:
	@scripts/ensure-redis-server.sh

# What the tests drive besides our code: the demo page's browser, the compose file's validator,
# openssl for the TLS test's certificate, faketime for workers whose clocks are off, nginx for PROXY=nginx,
# redis-sentinel for the failover test, ip for the test whose hosts are network namespaces, kubectl to render
# deploy/kubernetes/ (kustomize), KEDA's schemas to validate its autoscaler with, clang-format to check cpp/'s
# layout against cpp/.clang-format, clang with its libFuzzer and sanitizer runtimes to fuzz cpp/'s JSON reader, and
# the Docker engine with debootstrap for tests/integration/test_compose.py (images built, the compose file run).
test-tools:
	@scripts/ensure-debian-package.sh /usr/bin/chromium chromium docker-compose docker-compose openssl openssl \
		dockerd docker.io debootstrap debootstrap \
		faketime faketime redis-sentinel redis-sentinel ip iproute2 kubectl kubernetes-client clang-format clang-format \
		clang++ clang '/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a' libclang-rt-14-dev
	@scripts/ensure-nginx.sh
	@scripts/ensure-keda-schema.sh

model: $(VENV)/.installed
	$(PY) -m model_tools build-default --if-missing

# The default model as TorchScript (uint8 NHWC in, probabilities out, card inside): what cpp/ runs.
model-ts: model
	$(PY) -m model_tools trace --if-missing --optimize

# The C++ client cpp/build/classify, with classify-bench (its measurement switches, for scripts/bench_cpp.py) and
# test_resize (its resampler against Pillow's): finds or installs libtorch, OpenCV, cmake and g++ (cpp/build.sh).
cpp: model-ts
	cpp/build.sh

clean:
	rm -rf $(VENV) models/*.pth models/*.sha256 models/*.ts.pt models/*.onnx models/*.pt2 models/engine-cache cpp/build cpp/build-* cpp/libtorch .pytest_cache .bench-peers
