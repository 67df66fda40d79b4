# slidefuse container: CUDA 12 + cuDNN 9 runtime, libvips with OpenSlide, onnxruntime-gpu and TensorRT.
#   docker build -t slidefuse .
#   docker run --gpus all -v /slides:/slides -v /out:/out slidefuse segment /slides --out /out --backend auto
# Not built on the project's machines (no Docker engine there): see README, "What was verified where".
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# Ubuntu's libvips42 is built with OpenSlide (SVS, NDPI, MRXS, SCN, ...).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip libvips42 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/slidefuse
COPY pyproject.toml setup.cfg README.md ./
COPY slidefuse ./slidefuse

# Inference runtime with the GPU backends (onnxruntime-gpu, TensorRT). Add `export` for torch/timm.
RUN python3 -m pip install --upgrade pip \
    && python3 -m pip install ".[gpu,trt]"

# Smoke test: the CLI loads and the bundled demonstration model verifies.
RUN slidefuse --help && slidefuse models --help >/dev/null

ENTRYPOINT ["slidefuse"]
CMD ["--help"]
