# syntax=docker/dockerfile:1
# The checker image: `batchline cache check`, the init step of every Triton pod, and `batchline cache gc`,
# the model-cache clean-up Jobs. It holds this project's package without its dependencies: the cache
# commands use only the standard library (tests/chart/test_docker.py runs them that way), so no torch.
# The chart pins its tag (checker.image) apart from the operator's and the builder's: a new checker image
# rolls every Triton Deployment, so its tag moves only when the check itself changes.
# Build from the repository root (docker/checker.Dockerfile.dockerignore limits the context):
#   docker build -f docker/checker.Dockerfile -t batchline-checker:0.1.0 .

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY model_repo_builder/ model_repo_builder/
RUN python -m venv /opt/batchline \
 && /opt/batchline/bin/pip install --no-deps . \
 && /opt/batchline/bin/batchline cache --help > /dev/null

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 batchline \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin batchline
COPY --from=build /opt/batchline /opt/batchline
ENV PATH=/opt/batchline/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["batchline"]
CMD ["cache", "--help"]
