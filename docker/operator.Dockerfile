# syntax=docker/dockerfile:1
# The operator image: `batchline operator` and its Python dependencies, without torch.
# Build from the repository root (docker/operator.Dockerfile.dockerignore limits the context):
#   docker build -f docker/operator.Dockerfile -t batchline-operator:0.1.0 .
# The Helm chart runs it as UID 10001 with a read-only root filesystem.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY model_repo_builder/ model_repo_builder/
RUN python -m venv /opt/batchline \
 && /opt/batchline/bin/pip install . \
 && /opt/batchline/bin/batchline operator --help > /dev/null

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 batchline \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin batchline
COPY --from=build /opt/batchline /opt/batchline
ENV PATH=/opt/batchline/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["batchline"]
CMD ["operator"]
