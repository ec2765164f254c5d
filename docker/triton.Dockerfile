# syntax=docker/dockerfile:1
# The Triton image for spec.serving.backend python (the operator's default python image): NVIDIA's
# Triton server with its python backend, plus what a built model.py imports: torch, torchao and the
# transformers range that has continuous batching (the in-flight engine), from this project's
# [builder] extra, so the serving image and the builder pin the same transformers.
# Build from the repository root (docker/triton.Dockerfile.dockerignore limits the context):
#   docker build -f docker/triton.Dockerfile -t batchline-triton:0.1.0 .
#
# 25.01 is the first release on Ubuntu 24.04 (Python 3.12, whose stub the python backend ships); the
# torch wheel from PyPI carries CUDA 12, for KIND_GPU instances. The operator runs `tritonserver`
# (the Deployment's command) as uid 1000, the image's triton-server user.

FROM nvcr.io/nvidia/tritonserver:25.01-py3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
WORKDIR /tmp/batchline-src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY model_repo_builder/ model_repo_builder/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/batchline \
 && /opt/batchline/bin/pip install '.[builder]' \
 && /opt/batchline/bin/batchline build --help > /dev/null \
 && rm -rf /tmp/batchline-src
WORKDIR /
# The python backend's stub ignores PYTHONPATH, so the generated model.py adds these entries itself.
ENV PYTHONPATH=/opt/batchline/lib/python3.12/site-packages PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1
USER 1000:1000
ENTRYPOINT ["tritonserver"]
