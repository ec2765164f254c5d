"""Pure parts: config.pbtxt rendering, the vLLM layout, options and the build key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo_builder import BatchingOptions, BuildOptions, Mode, compute_content_key
from model_repo_builder.checkpoint import Checkpoint, ModelKind
from model_repo_builder.errors import UnsupportedModeError
from model_repo_builder.options import Backend, Engine, InstanceKind, QualityThresholds
from model_repo_builder.triton_config import python_model_config, render_config, warmup_files
from model_repo_builder.vllm_layout import check_tensor_parallel, vllm_engine_args, write_vllm_model

FILES = {"config.json": "a" * 64, "model.safetensors": "b" * 64}


def test_static_generation_config_has_the_front_end_tensor_names_and_batching() -> None:
    options = BuildOptions(
        model_name="llm",
        engine=Engine.STATIC,
        batching=BatchingOptions(
            max_batch_size=16,
            max_queue_delay_microseconds=2500,
            preferred_batch_sizes=(4, 8),
            max_queue_size=64,
            default_timeout_microseconds=10_000_000,
        ),
        instance_kind=InstanceKind.GPU,
        instance_count=2,
        response_cache=True,
        num_versions=2,
    )
    text = render_config(python_model_config(ModelKind.CAUSAL_LM, options, embedding_size=64))
    assert 'name: "llm"' in text and 'backend: "python"' in text
    assert "max_batch_size: 16" in text
    for name in ("text_input", "max_tokens", "temperature", "top_p", "stop", "text_output"):
        assert f'name: "{name}"' in text
    assert '{ name: "stop" data_type: TYPE_STRING dims: [ -1 ] optional: true }' in text
    assert "preferred_batch_size: [ 4, 8 ]" in text
    assert "max_queue_delay_microseconds: 2500" in text
    assert "max_queue_size: 64" in text and "default_timeout_microseconds: 10000000" in text
    assert "instance_group [ { count: 2 kind: KIND_GPU } ]" in text
    assert "version_policy: { latest: { num_versions: 2 } }" in text
    assert "response_cache { enable: true }" in text
    assert 'input_data_file: "text_input"' in text and 'input_data_file: "max_tokens"' in text
    assert text == render_config(python_model_config(ModelKind.CAUSAL_LM, options, embedding_size=64))


def test_inflight_config_is_decoupled_with_the_streaming_contract() -> None:
    options = BuildOptions(
        model_name="llm",
        batching=BatchingOptions(max_batch_size=16),
        instance_count=2,
        kv_cache_tokens=4096,
        max_batch_tokens=256,
    )
    assert options.engine is Engine.INFLIGHT
    text = render_config(python_model_config(ModelKind.CAUSAL_LM, options, embedding_size=64))
    assert "model_transaction_policy { decoupled: true }" in text
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text and "model_warmup" not in text
    for name in ("text_input", "messages", "stream", "max_tokens", "temperature", "top_p", "seed", "stop"):
        assert f'{{ name: "{name}" ' in text and "optional: true" in text.split(f'name: "{name}"')[1].split("\n")[0]
    for name in ("text_output", "finish_reason", "prompt_tokens", "completion_tokens"):
        assert f'{{ name: "{name}" ' in text
    assert '{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }' in text
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in text
    for key, value in {"kv_cache_tokens": "4096", "max_batch_tokens": "256", "max_running_requests": "16"}.items():
        assert f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' in text
    # Embedding models keep one forward pass per Triton batch, whatever the engine.
    embedding = render_config(python_model_config(ModelKind.EMBEDDING, options, embedding_size=384))
    assert "decoupled" not in embedding and "max_batch_size: 16" in embedding


def test_embedding_config_and_unbatched_config() -> None:
    options = BuildOptions(batching=BatchingOptions(max_batch_size=1, dynamic_batching=False), warmup=False)
    text = render_config(python_model_config(ModelKind.EMBEDDING, options, embedding_size=384))
    assert '{ name: "embedding" data_type: TYPE_FP32 dims: [ 384 ] }' in text
    assert "max_tokens" not in text and "text_output" not in text
    assert "dynamic_batching" not in text and "model_warmup" not in text
    assert "max_batch_size: 1" in text


def test_warmup_files_are_triton_string_elements() -> None:
    files = warmup_files(ModelKind.CAUSAL_LM)
    assert files["text_input"] == b"\x05\x00\x00\x00Hello"
    assert int.from_bytes(files["max_tokens"], "little") == 1
    assert set(warmup_files(ModelKind.EMBEDDING)) == {"text_input"}


def test_vllm_layout_carries_fp8_quantization(tmp_path: Path) -> None:
    options = BuildOptions(mode=Mode.FP8, backend=Backend.VLLM, model_name="llm", vllm_model_root="/mnt/models/")
    write_vllm_model(tmp_path / "llm", options)
    config = (tmp_path / "llm" / "config.pbtxt").read_text()
    assert 'backend: "vllm"' in config and "max_batch_size: 0" in config
    assert "kind: KIND_MODEL" in config and "decoupled: true" in config
    engine = json.loads((tmp_path / "llm" / "1" / "model.json").read_text())
    assert engine == vllm_engine_args(options)
    assert engine["quantization"] == "fp8" and engine["dtype"] == "bfloat16"
    assert engine["model"] == "/mnt/models/llm/1/weights"
    assert "quantization" not in vllm_engine_args(BuildOptions(mode=Mode.BF16, backend=Backend.VLLM))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_name": "bad name"},
        {"group_size": 48},
        {"instance_count": 0},
        {"kv_cache_tokens": 100},
        {"max_batch_tokens": 4},
        {"engine": "dynamic"},
    ],
)
def test_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BuildOptions(**kwargs)


def test_bad_batching_is_refused() -> None:
    with pytest.raises(ValueError):
        BatchingOptions(max_batch_size=0)
    with pytest.raises(ValueError):
        BatchingOptions(max_batch_size=4, preferred_batch_sizes=(8,))


def test_build_key_is_stable_and_depends_on_every_input() -> None:
    base = BuildOptions(mode=Mode.INT8_WEIGHT_ONLY)
    key = compute_content_key(FILES, base)
    assert key == compute_content_key(dict(reversed(FILES.items())), BuildOptions(mode=Mode.INT8_WEIGHT_ONLY))
    variants = [
        compute_content_key({**FILES, "model.safetensors": "c" * 64}, base),
        compute_content_key(FILES, BuildOptions(mode=Mode.INT4_WEIGHT_ONLY)),
        compute_content_key(FILES, BuildOptions(mode=Mode.INT8_WEIGHT_ONLY, backend=Backend.VLLM)),
        compute_content_key(
            FILES, BuildOptions(mode=Mode.INT8_WEIGHT_ONLY, batching=BatchingOptions(max_batch_size=4))
        ),
        compute_content_key(FILES, BuildOptions(mode=Mode.INT8_WEIGHT_ONLY, quality=QualityThresholds(0.5, 0.5, 0.5))),
        compute_content_key(FILES, base, builder_version="0.0.0"),
    ]
    assert len({key, *variants}) == len(variants) + 1


def test_none_resolves_to_the_checkpoint_dtype_on_gpus_and_float32_on_cpu() -> None:
    gpu = BuildOptions(instance_kind=InstanceKind.GPU)
    assert gpu.float_mode("bfloat16") is Mode.BF16 and gpu.float_mode("float16") is Mode.FP16
    assert gpu.float_mode("float32") is Mode.NONE  # quantize.py's float32
    assert BuildOptions(backend=Backend.VLLM).float_mode("bfloat16") is Mode.BF16  # vLLM runs on GPUs only
    assert BuildOptions().float_mode("bfloat16") is Mode.NONE  # KIND_CPU: float32
    assert BuildOptions(mode=Mode.FP32, instance_kind=InstanceKind.GPU).float_mode("bfloat16") is Mode.NONE
    assert BuildOptions(mode=Mode.INT8_WEIGHT_ONLY).float_mode("bfloat16") is Mode.INT8_WEIGHT_ONLY


def test_vllm_engine_dtype_follows_the_checkpoint_for_none_and_is_float32_for_fp32() -> None:
    none = BuildOptions(backend=Backend.VLLM)
    assert vllm_engine_args(none, "bfloat16")["dtype"] == "bfloat16"
    assert vllm_engine_args(none, "float16")["dtype"] == "float16"
    assert vllm_engine_args(none, "float32")["dtype"] == "float32"
    assert vllm_engine_args(BuildOptions(mode=Mode.FP32, backend=Backend.VLLM), "bfloat16")["dtype"] == "float32"
    assert vllm_engine_args(BuildOptions(mode=Mode.FP16, backend=Backend.VLLM), "bfloat16")["dtype"] == "float16"


def test_vllm_tensor_parallel_layout_is_one_engine_over_the_pods_gpus(tmp_path: Path) -> None:
    options = BuildOptions(backend=Backend.VLLM, model_name="big", tensor_parallel_size=4)
    write_vllm_model(tmp_path / "big", options, "bfloat16")
    engine = json.loads((tmp_path / "big" / "1" / "model.json").read_text())
    assert engine["tensor_parallel_size"] == 4 and engine["dtype"] == "bfloat16"
    config = (tmp_path / "big" / "config.pbtxt").read_text()
    assert "instance_group [ { count: 1 kind: KIND_MODEL } ]" in config  # one model instance, not one per GPU
    assert vllm_engine_args(BuildOptions(backend=Backend.VLLM))["tensor_parallel_size"] == 1
    assert compute_content_key(FILES, options) != compute_content_key(
        FILES, BuildOptions(backend=Backend.VLLM, model_name="big", tensor_parallel_size=2)
    )


def test_tensor_parallel_sizes_vllm_cannot_split_a_model_over_are_refused() -> None:
    llama_70b = {"num_attention_heads": 64, "num_key_value_heads": 8}
    for size in (1, 2, 4, 8):
        check_tensor_parallel(BuildOptions(backend=Backend.VLLM, tensor_parallel_size=size), llama_70b)
    qwen_7b = {"num_attention_heads": 28, "num_key_value_heads": 4}
    check_tensor_parallel(BuildOptions(backend=Backend.VLLM, tensor_parallel_size=4), qwen_7b)
    with pytest.raises(UnsupportedModeError, match="28 attention heads"):
        check_tensor_parallel(BuildOptions(backend=Backend.VLLM, tensor_parallel_size=8), qwen_7b)
    with pytest.raises(ValueError, match="vllm backend"):
        BuildOptions(tensor_parallel_size=2)  # the python backend copies the model per GPU
    with pytest.raises(ValueError):
        BuildOptions(backend=Backend.VLLM, tensor_parallel_size=0)


def _checkpoint(tmp_path: Path, config: dict, tensors: dict[str, tuple[str, list[int]]]) -> Checkpoint:
    header = json.dumps(
        {name: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]} for name, (dtype, shape) in tensors.items()}
    )
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    return Checkpoint(tmp_path, str(tmp_path), config, ModelKind.CAUSAL_LM, "LlamaForCausalLM", {})


def test_the_checkpoint_dtype_comes_from_config_json_else_the_weights(tmp_path: Path) -> None:
    assert _checkpoint(tmp_path, {"torch_dtype": "bfloat16"}, {}).dtype == "bfloat16"
    assert _checkpoint(tmp_path, {"dtype": "float16", "torch_dtype": "float32"}, {}).dtype == "float16"
    weights = {"embed": ("BF16", [1000, 64]), "norm": ("F32", [64])}
    assert _checkpoint(tmp_path, {}, weights).dtype == "bfloat16"  # most bytes
    assert _checkpoint(tmp_path, {"torch_dtype": "auto"}, {"w": ("F16", [8, 8])}).dtype == "float16"
    assert _checkpoint(tmp_path, {}, {"w": ("I8", [8, 8])}).dtype == "float32"  # transformers' default


def test_an_operator_build_removes_old_downloads_and_killed_builds_staging_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from model_repo_builder.cli import STALE_STAGING_SECONDS, remove_leftovers

    monkeypatch.setenv("HF_HOME", "/hf-home")  # the build pod's emptyDir
    (tmp_path / ".huggingface" / "hub" / "models--org--gated").mkdir(parents=True)
    killed = tmp_path / f".{'a' * 24}-x1y2z3"  # an OOM-killed build's staging folder
    running = tmp_path / f".{'b' * 24}-q9w8e7"
    for folder in (killed, running, tmp_path / ("c" * 24)):
        (folder / "repository").mkdir(parents=True)
    (tmp_path / "spec-key").symlink_to("c" * 24)
    long_ago = 1_000_000.0
    os.utime(killed, (long_ago, long_ago))
    now = long_ago + STALE_STAGING_SECONDS + 1
    os.utime(running, (now - 60, now - 60))
    assert remove_leftovers(tmp_path, now=now) == [".huggingface", killed.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "c" * 24, "spec-key"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / ".huggingface"))  # still in use: kept
    (tmp_path / ".huggingface").mkdir()
    assert remove_leftovers(tmp_path, now=now) == []
