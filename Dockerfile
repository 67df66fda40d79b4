# slidefuse container images on Debian bookworm: libvips with OpenSlide from Debian, everything else from pip.
#
#   docker build -t slidefuse:gpu .                  # default target: onnxruntime-gpu (CUDA 12, cuDNN 9) + TensorRT 10
#   docker build -t slidefuse:gpu --build-arg TENSORRT=0 .   # the same without TensorRT (no access to pypi.nvidia.com)
#   docker build -t slidefuse:cpu --target cpu .     # onnxruntime on the CPU, for labs without GPUs
#   docker run --rm --gpus all -v /data/slides:/slides:ro -v /data/out:/out slidefuse:gpu \
#       segment /slides --out /out --backend auto
#
# No CUDA base image is needed: onnxruntime-gpu's [cuda,cudnn] extras and tensorrt-cu12 bring the CUDA libraries
# as wheels; the host needs only the NVIDIA driver (and the NVIDIA container toolkit for --gpus).
# BASE may be any Debian bookworm image; without python3.11 (e.g. a plain debian:bookworm) Debian's is installed.
# Behind a TLS-inspecting proxy, pass its CA bundle as a build secret (not stored in the image):
#   --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
# `make image` / `make image-test` build and check both targets (with podman/buildah when there is no docker).

ARG BASE=python:3.11-slim-bookworm

# ---- base: Python 3.11, libvips with OpenSlide, a non-root user --------------------------------------------
FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Debian's libvips42 is built with OpenSlide (SVS, NDPI, MRXS, SCN, ...).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvips42 ca-certificates \
    && if ! command -v python3.11 >/dev/null; then \
           apt-get install -y --no-install-recommends python3.11 python3.11-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin slidefuse \
    && mkdir -p /slides /out && chown slidefuse:slidefuse /out

# ---- build: one virtual environment per target, the package installed without its dependencies -------------
# setup.cfg's base requirement is the CPU onnxruntime; the GPU target must not get it next to onnxruntime-gpu,
# so each target installs its own explicit requirement set (tools/image/requirements-*.txt) and then the
# package with --no-deps.
FROM base AS build-cpu
COPY tools/image/requirements-cpu.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3.11 -m venv /opt/slidefuse \
    && /opt/slidefuse/bin/pip install -q -r /tmp/requirements.txt
COPY pyproject.toml setup.cfg README.md /src/
COPY slidefuse /src/slidefuse
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/slidefuse/bin/pip install -q --no-deps /src \
    && rm -rf /src

FROM base AS build-gpu
# TENSORRT=0 leaves TensorRT out (the ort-cuda backend still works; trt and ort-trt then say TensorRT is missing).
ARG TENSORRT=1
COPY tools/image/requirements-gpu.txt tools/image/requirements-tensorrt.txt /tmp/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3.11 -m venv /opt/slidefuse \
    && /opt/slidefuse/bin/pip install -q -r /tmp/requirements-gpu.txt \
    && if [ "$TENSORRT" = 1 ]; then /opt/slidefuse/bin/pip install -q --extra-index-url https://pypi.nvidia.com \
           -r /tmp/requirements-tensorrt.txt; fi \
    && if /opt/slidefuse/bin/pip show -q onnxruntime 2>/dev/null; then \
           echo "the CPU onnxruntime got installed next to onnxruntime-gpu" >&2; exit 1; fi
COPY pyproject.toml setup.cfg README.md /src/
COPY slidefuse /src/slidefuse
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/slidefuse/bin/pip install -q --no-deps /src \
    && rm -rf /src

# ---- runtime images --------------------------------------------------------------------------------------------
FROM base AS runtime
ARG BASE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="slidefuse" \
      org.opencontainers.image.description="Whole-slide segmentation with pathology foundation-model encoders as fused ONNX / TensorRT graphs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE}"
ENV PATH=/opt/slidefuse/bin:$PATH
COPY tools/image/smoke.sh /usr/local/bin/slidefuse-smoke
WORKDIR /out
USER slidefuse
ENTRYPOINT ["slidefuse"]
CMD ["--help"]
HEALTHCHECK --interval=5m --timeout=60s --start-period=10s CMD ["slidefuse-smoke"]

FROM runtime AS cpu
COPY --from=build-cpu /opt/slidefuse /opt/slidefuse
LABEL org.opencontainers.image.variant="cpu"
RUN slidefuse-smoke

FROM runtime AS gpu
ARG TENSORRT=1
COPY --from=build-gpu /opt/slidefuse /opt/slidefuse
LABEL org.opencontainers.image.variant="gpu" \
      io.slidefuse.tensorrt="${TENSORRT}"
RUN slidefuse-smoke
