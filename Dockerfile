# slidefuse on a CUDA base image. Build: docker build -t slidefuse .
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv libvips42 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/slidefuse
COPY pyproject.toml setup.cfg README.md ./
COPY slidefuse ./slidefuse
RUN python3 -m pip install ".[gpu]"
RUN slidefuse --help
ENTRYPOINT ["slidefuse"]
