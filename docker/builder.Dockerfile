# syntax=docker/dockerfile:1
# The model-repository builder image: `batchline build` with torch, torchao and transformers
# (the [builder] extra). The operator runs it in build Jobs that write to the model-cache claim.
# Build from the repository root (docker/builder.Dockerfile.dockerignore limits the context):
#   docker build -f docker/builder.Dockerfile -t batchline-builder:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY model_repo_builder/ model_repo_builder/
RUN python -m venv /opt/batchline \
 && /opt/batchline/bin/pip install '.[builder]' \
 && /opt/batchline/bin/batchline build --help > /dev/null

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 batchline \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin batchline
COPY --from=build /opt/batchline /opt/batchline
# Hugging Face downloads go to the writable cache volume the build Job mounts, never the image.
ENV PATH=/opt/batchline/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HOME=/cache/huggingface
USER 10001:10001
ENTRYPOINT ["batchline", "build"]
