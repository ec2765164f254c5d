"""The packed int8/int4 layouts, magnitude pruning and de-quantizing at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo_builder import BuildOptions, Mode, build
from model_repo_builder.runtime import PackedEmbedding, PackedLinear, load_model

from .conftest import LOOSE

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory, torch_threads: None) -> Path:
    """256 wide: big enough that scales, norms and file overhead no longer hide the int4 ratio."""
    from model_repo_builder.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("wide-llama"), "llama", hidden_size=256, layers=1)


def test_int4_is_six_times_smaller_than_fp32_embedding_included(wide_llama: Path, tmp_path: Path) -> None:
    result = build(wide_llama, tmp_path, BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, quality=LOOSE, warmup=False))
    report = result.report
    assert report["size"]["compression_ratio_vs_fp32"] >= 6.0
    # Every Linear layer and the tied embedding / LM head (stored once) are int4.
    assert report["quantization"]["layers"] == {"int4-weight-only": 8}
    assert report["quantization"]["formats"] == {"int4 group 32 asymmetric, float16 scale and offset": 8}
    loaded = load_model(result.weights_dir)
    assert loaded.model.get_input_embeddings().packed.bits == 4


def test_int8_keeps_the_embedding_and_head_in_groups_of_32(wide_llama: Path, tmp_path: Path) -> None:
    result = build(wide_llama, tmp_path, BuildOptions(mode=Mode.INT8_WEIGHT_ONLY, quality=LOOSE, warmup=False))
    assert result.report["quantization"]["formats"] == {
        "int8 group 32 symmetric, float16 scale": 1,
        "int8 per-row asymmetric, float32 scale and offset": 7,
    }
    assert result.report["size"]["compression_ratio_vs_fp32"] >= 3.7


def test_weights_on_the_int4_and_int8_grids_come_back_exactly() -> None:
    import torch

    from model_repo_builder.quantize import pack_int4, pack_int8_groups

    torch.manual_seed(0)
    # llama.cpp Q4_1-like data: per group of 32, code * scale + min with float16 scale and min.
    scale = (torch.rand(64, 4, 1) / 10 + 0.01).half().float()
    low = -torch.rand(64, 4, 1).half().float()
    codes = torch.randint(0, 16, (64, 4, 32)).float()
    codes[..., 0], codes[..., 1] = 0, 15
    weight = (codes * scale + low).reshape(64, 128)
    packed, _ = pack_int4(weight, 32, symmetric=False)
    assert torch.equal(packed.dequantize(), weight)
    # Q8_0-like data: symmetric int8 codes with a float16 scale per group of 32.
    codes8 = torch.randint(-127, 128, (64, 4, 32)).float()
    codes8[..., 0] = 127
    weight8 = (codes8 * scale).reshape(64, 128)
    packed8, _ = pack_int8_groups(weight8, 32)
    assert torch.equal(packed8.dequantize(), weight8)
    # An embedding lookup de-quantizes the same numbers row by row.
    rows = torch.tensor([[3, 0], [63, 3]])
    assert torch.equal(packed.dequantize(rows=rows), weight[rows])


@pytest.mark.parametrize("mode", [Mode.NONE, Mode.INT8_WEIGHT_ONLY, Mode.INT4_WEIGHT_ONLY, Mode.INT8_DYNAMIC], ids=str)
def test_sparsity_zeroes_the_requested_fraction_of_each_body_row(mode: Mode, tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    from model_repo_builder.prune import body_weights

    dense = build(tiny_llama, tmp_path, BuildOptions(mode=mode, quality=LOOSE, warmup=False))
    sparse = build(tiny_llama, tmp_path, BuildOptions(mode=mode, quality=LOOSE, warmup=False, sparsity=0.5))
    assert sparse.key != dense.key
    report = sparse.report
    assert report["options"]["sparsity"] == 0.5 and dense.report["options"]["sparsity"] == 0.0
    pruning = report["pruning"]
    # 2 blocks x 7 Linear layers; the tied LM head is left alone.
    assert pruning["sparsity"] == 0.5 and pruning["layers"] == 14
    assert pruning["pruned_weights"] == pruning["body_weights"] // 2
    # Measured on the served weights: the pruned zeros survive quantization exactly.
    assert pruning["served_zero_fraction"] >= 0.5
    assert dense.report["pruning"]["served_zero_fraction"] < 0.01
    loaded = load_model(sparse.weights_dir)
    for weight in body_weights(loaded.model):
        assert ((weight == 0).sum(dim=1) >= weight.shape[1] // 2).all()
    # The embedding (and the tied LM head) is not pruned: it comes back as in the dense build.
    tables = []
    for model in (loaded.model, load_model(dense.weights_dir).model):
        embedding = model.get_input_embeddings()
        table = embedding.packed.dequantize() if isinstance(embedding, PackedEmbedding) else embedding.weight
        tables.append(table.dequantize() if hasattr(table, "qdata") else table)  # torchao int8 (int8-dynamic)
    assert torch.equal(tables[0], tables[1])
    assert torch.isfinite(torch.tensor(report["quality"]["perplexity"]))


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_a_bad_sparsity_is_refused_before_anything_is_written(
    value: float, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchline.cli import main

    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        BuildOptions(sparsity=value)
    root = tmp_path / "out"
    assert main(["build", str(tiny_llama), str(root), "--sparsity", str(value)]) == 2
    assert "sparsity must be a number in [0, 1)" in capsys.readouterr().err
    assert not root.exists()


def test_dequantize_at_load_serves_float_layers_with_the_same_numbers(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    packed = build(tiny_llama, tmp_path, BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, quality=LOOSE, warmup=False))
    options = BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, quality=LOOSE, warmup=False, dequantize_at_load=True)
    dense = build(tiny_llama, tmp_path, options)
    assert dense.key != packed.key
    # Same stored weights, same measured quality; only the way the server holds them differs.
    assert dense.report["size"] == packed.report["size"]
    for name in ("perplexity", "top1_agreement", "max_logit_error"):
        assert dense.report["quality"][name] == packed.report["quality"][name]
    assert "de-quantized to float32 at load" in dense.report["quality"]["measured_on"]
    config = (dense.repository / "model" / "config.pbtxt").read_text()
    assert 'key: "dequantize_at_load" value: { string_value: "true" }' in config
    assert "dequantize_at_load" not in (packed.repository / "model" / "config.pbtxt").read_text()
    loaded = load_model(dense.weights_dir, dequantize=True)
    up = loaded.model.model.layers[0].mlp.up_proj
    assert type(up) is torch.nn.Linear and up.weight.dtype == torch.float32
    assert loaded.model.get_input_embeddings().weight is loaded.model.get_output_embeddings().weight
    reference = load_model(packed.weights_dir)
    assert isinstance(reference.model.model.layers[0].mlp.up_proj, PackedLinear)
    ids = torch.tensor([[1, 5, 9, 200, 17]])
    with torch.inference_mode():
        assert torch.equal(loaded.model(ids).logits, reference.model(ids).logits)


def test_dequantize_at_load_needs_a_packed_mode() -> None:
    with pytest.raises(ValueError, match="dequantize_at_load applies to modes"):
        BuildOptions(mode=Mode.INT8_DYNAMIC, dequantize_at_load=True)


def test_the_quality_gate_reads_the_whole_evaluation_text(served_llama) -> None:
    from model_repo_builder.calibration_text import CALIBRATION_TEXT
    from model_repo_builder.eval_text import EVAL_TEXT, PARAGRAPHS

    quality = served_llama.report["quality"]
    tokenizer = load_model(served_llama.weights_dir).tokenizer
    assert quality["eval_tokens"] == len(tokenizer(EVAL_TEXT).input_ids) > 384
    assert quality["eval_predictions"] < quality["eval_tokens"]
    # The int4 quantizer's calibration text shares no paragraph with the evaluation text.
    assert not any(paragraph[:60] in CALIBRATION_TEXT for paragraph in PARAGRAPHS)
    assert json.loads((served_llama.path / "build-report.json").read_text())["quality"] == quality
