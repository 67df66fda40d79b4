# slidefuse — the two commands a newcomer needs:
#   make demo   set up (system libvips with OpenSlide, .venv, the package) and segment a real slide
#   make test   set up the same way and run ruff, mypy and the test suite
# Both are idempotent and quick when everything is already in place.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
VPY    := $(VENV)/bin/python
CACHE  := .cache
DEMO_SLIDE := $(CACHE)/demo/CMU-1-Small-Region.svs
DEMO_OUT   := demo-out

.PHONY: demo test test-slow lint typecheck docs-check gpu-check gpu-check-dry-run triton-server image image-gpu image-test image-test-cpu setup setup-dev system-deps bench-cpu clean help

help:
	@echo "make demo       set up and segment the real CMU-1-Small-Region slide with the default model"
	@echo "make test       set up and run ruff, mypy and pytest"
	@echo "make test-slow  also run the slow tests (real-size phikon / lunit exports, Triton, Ray, the fault-injection rounds)"
	@echo "make image-test build the container images (CPU and GPU targets) and check them; make image: CPU only"

$(VPY):
	@bash tools/ensure_python.sh "$(PYTHON)" $(VENV)

# Re-install only when the package metadata changes.
$(VENV)/.stamp-base: setup.cfg pyproject.toml | $(VPY)
	$(VPY) -m pip install -q -e .
	@touch $@

$(VENV)/.stamp-dev: setup.cfg pyproject.toml | $(VPY)
	$(VPY) -m pip install -q -e ".[export,dev]"
	@touch $@ $(VENV)/.stamp-base

system-deps: $(VENV)/.stamp-base
	@bash tools/ensure_libvips.sh $(VPY)

setup: $(VENV)/.stamp-base system-deps

setup-dev: $(VENV)/.stamp-dev system-deps

$(DEMO_SLIDE): tools/fetch_demo_slide.py | $(VPY)
	$(VPY) tools/fetch_demo_slide.py --dest $@

demo: setup $(DEMO_SLIDE)
	$(VENV)/bin/slidefuse info $(DEMO_SLIDE)
	$(VENV)/bin/slidefuse segment $(DEMO_SLIDE) --out $(DEMO_OUT)
	@echo ""
	@echo "Outputs for the demo slide are in $(DEMO_OUT)/CMU-1-Small-Region/"
	@ls -l $(DEMO_OUT)/CMU-1-Small-Region/

lint: setup-dev
	$(VENV)/bin/ruff check slidefuse tests benchmarks tools

typecheck: setup-dev
	$(VENV)/bin/mypy

docs-check: setup-dev
	$(VENV)/bin/python tools/gen_cli_docs.py --check

# The tests that need a real slide use the demo slide (fetched once, like `make demo` does); the other real
# slides come from $SLIDEFUSE_TEST_SLIDES when set (docs/verification.md, "Testing"), else those tests skip.
test: setup-dev lint typecheck docs-check $(DEMO_SLIDE)
	$(VENV)/bin/python -m pytest -q

# pytest exits 5 when no test is selected; that is not a failure here.
test-slow: setup-dev triton-server $(DEMO_SLIDE)
	$(VENV)/bin/python -m pytest -q -m "slow and not gpu" || [ $$? -eq 5 ]

# A real Triton server for the triton backend's slow tests and benchmarks/bench_triton.py (tools/triton_local.py):
# the tritonserver binary of the nvidia-pytriton wheel, in its own environment (nvidia-pytriton requires
# numpy < 2; the dev environment has numpy 2).
TRITON_ENV := $(CACHE)/triton-server
$(TRITON_ENV)/.stamp: | $(VPY)
	$(VPY) -m venv $(TRITON_ENV)
	$(TRITON_ENV)/bin/pip install -q "nvidia-pytriton==0.7.0" "onnxruntime>=1.18" "numpy<2"
	@touch $@

triton-server: $(TRITON_ENV)/.stamp

# Container images (Dockerfile, tools/image/image.sh): docker where a daemon answers, else podman/buildah with a
# Debian bookworm base made here by mmdebstrap (apt-get install podman buildah mmdebstrap).
image:
	bash tools/image/image.sh build cpu

image-gpu:
	bash tools/image/image.sh build gpu

# Both targets: the demo slide segmented inside the CPU image (mask equal to this machine's), GPU libraries checked.
image-test: setup-dev $(DEMO_SLIDE)
	bash tools/image/image.sh build cpu
	bash tools/image/image.sh test cpu
	bash tools/image/image.sh build gpu
	bash tools/image/image.sh test gpu

# The CPU target only (what CI runs on every submission): built, and the demo slide segmented inside it.
image-test-cpu: setup-dev $(DEMO_SLIDE)
	bash tools/image/image.sh build cpu
	bash tools/image/image.sh test cpu

# On a GPU machine (see tools/gpu_check.py): tests, engine benchmarks and slides end to end into
# RESULTS. Fetch the wheels that machine lacks first, here: tools/fetch_gpu_wheels.sh (carry .whl).
RESULTS ?= gpu-check-results
gpu-check:
	python3 tools/gpu_check.py --results $(RESULTS) $(GPU_CHECK_ARGS)

gpu-check-dry-run: setup-dev
	$(VPY) tools/gpu_check.py --results $(RESULTS) --dry-run

clean:
	rm -rf $(VENV) $(CACHE) $(DEMO_OUT) *.egg-info
