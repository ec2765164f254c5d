"""int8/int4 weight-only builds in compressed-tensors format, magnitude pruning, the vLLM layout's
structure, and bad inputs to the integer recipes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from model_repo_builder import BuildOptions, Mode, UnsupportedModeError, build
from model_repo_builder.options import Backend
from model_repo_builder.runtime import load_model

from .conftest import LOOSE

pytestmark = pytest.mark.torch

INTEGER_MODES = [Mode.INT8_WEIGHT_ONLY, Mode.INT4_WEIGHT_ONLY]
# Bits and group size per integer mode with the default options (int8 groups are fixed).
LAYOUT = {Mode.INT8_WEIGHT_ONLY: (8, 32), Mode.INT4_WEIGHT_ONLY: (4, 32)}


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory, torch_threads: None) -> Path:
    """256 wide: big enough that scales, norms and file overhead no longer hide the int4 ratio."""
    from model_repo_builder.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("wide-llama"), "llama", hidden_size=256, layers=1)


def _in_process_model(checkpoint: Path, mode: Mode, group_size: int) -> object:
    """The builder's own quantized model in memory (the same steps as builder._build_into)."""
    from model_repo_builder.builder import _load_reference
    from model_repo_builder.checkpoint import inspect_checkpoint
    from model_repo_builder.quantize import calibration_batches, calibration_hessians, quantize_model
    from model_repo_builder.runtime import conv1d_to_linear

    reference = _load_reference(inspect_checkpoint(str(checkpoint)), "cpu")
    candidate = copy.deepcopy(reference.model)
    converted = conv1d_to_linear(candidate) > 0
    hessians = calibration_hessians(candidate, calibration_batches(reference))
    quantize_model(candidate, mode, group_size, hessians=hessians, converted=converted)
    return candidate.eval()


@pytest.mark.parametrize("mode", INTEGER_MODES, ids=str)
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_compressed_tensors_reload_gives_the_builders_logits(
    architecture: str, mode: Mode, tiny_llama: Path, tiny_gpt2: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors import safe_open

    checkpoint = tiny_llama if architecture == "llama" else tiny_gpt2
    result = build(checkpoint, tmp_path, BuildOptions(mode=mode, quality=LOOSE, warmup=False))
    bits, group = LAYOUT[mode]
    report = result.report
    assert report["quantization"]["recipe"] == "weighted-rtn"
    # 2 blocks x 4 (GPT-2: Conv1D turned into Linear) or 7 (Llama) Linear layers; the LM head stays float.
    layers = 8 if architecture == "gpt2" else 14
    assert report["quantization"]["layers"] == {str(mode): layers}
    config = json.loads((result.weights_dir / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors" and quantization["format"] == "pack-quantized"
    (group_config,) = quantization["config_groups"].values()
    assert group_config["weights"] | {"num_bits": bits, "group_size": group} == group_config["weights"]
    with safe_open(result.weights_dir / "model.safetensors", "pt") as tensors:
        packed = [key for key in tensors.keys() if key.endswith(".weight_packed")]  # noqa: SIM118
        assert len(packed) == layers
        assert all(tensors.get_slice(key).get_dtype() == "I32" for key in packed)
        # No float copy of a quantized weight is stored next to its codes.
        assert not {key.removesuffix("_packed") for key in packed} & set(tensors.keys())

    ids = torch.tensor([[1, 5, 9, 200, 17, 3, 44]])
    in_process = _in_process_model(checkpoint, mode, group)
    served = load_model(result.weights_dir).model
    with torch.inference_mode():
        expected = in_process(ids).logits  # type: ignore[operator]
        assert torch.equal(served(ids).logits, expected)
        if architecture == "llama":
            # transformers alone (no Batchline code) reads the same files and numbers.
            from transformers import AutoModelForCausalLM, CompressedTensorsConfig

            plain = AutoModelForCausalLM.from_pretrained(
                result.weights_dir, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)
            )
            assert torch.equal(plain(ids).logits, expected)


def test_int4_size_and_what_stays_float(wide_llama: Path, tmp_path: Path) -> None:
    result = build(wide_llama, tmp_path, BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, quality=LOOSE, warmup=False))
    report = result.report
    # 7 body layers at ~4.6 bits per weight (a float16 scale and a 4-bit zero point per group of 32); the
    # tied embedding / LM head (a sixth of the weights here) stays float16, which transformers does not
    # read quantized in this format.
    assert report["quantization"]["formats"] == {"int4 group 32 asymmetric, float16 scale (weighted-rtn)": 7}
    assert report["size"]["compression_ratio_vs_fp32"] >= 5.0
    # The gate measured what the python backend serves: the weights de-quantized once at load.
    assert report["quality"]["measured_on"].endswith(", de-quantized to float32 at load as served")
    loaded = load_model(result.weights_dir)
    embedding = loaded.model.get_input_embeddings().weight
    assert embedding is loaded.model.get_output_embeddings().weight and embedding.dtype.itemsize == 4
    # The served float32 embedding holds float16 values: what the folder stores.
    assert embedding.equal(embedding.half().float())


def test_vllm_layout_matches_what_vllm_reads(tiny_llama: Path, tmp_path: Path) -> None:
    options = BuildOptions(
        mode=Mode.INT4_WEIGHT_ONLY, backend=Backend.VLLM, model_name="llm", group_size=64, quality=LOOSE
    )
    result = build(tiny_llama, tmp_path, options)
    model_dir = result.repository / "llm"
    assert 'backend: "vllm"' in (model_dir / "config.pbtxt").read_text()
    assert result.report["quality"]["measured_on"] == "weights reloaded from the repository"  # vLLM: int kernels
    assert {p.name for p in (model_dir / "1").iterdir()} == {"model.json", "weights"}
    engine = json.loads((model_dir / "1" / "model.json").read_text())
    # vLLM finds the quantization in config.json; its integer kernels run in float16 or bfloat16.
    assert engine["model"] == "/models/llm/1/weights" and "quantization" not in engine
    assert engine["dtype"] in ("float16", "bfloat16")
    config = json.loads((result.weights_dir / "config.json").read_text())
    assert config["dtype"] == engine["dtype"]
    quantization = config["quantization_config"]
    # What vLLM's CompressedTensorsConfig reads to pick its W4A16 (WNA16) scheme.
    assert quantization["quant_method"] == "compressed-tensors"
    assert quantization["format"] == "pack-quantized"
    assert quantization["ignore"] == ["lm_head"]
    (group_config,) = quantization["config_groups"].values()
    assert group_config["targets"] == ["Linear"] and group_config["input_activations"] is None
    weights = group_config["weights"]
    # Marlin takes zero points for 4 bits only (uint4); int8 must be symmetric (uint8b128).
    assert weights["type"] == "int" and weights["num_bits"] == 4 and weights["symmetric"] is False
    assert weights["strategy"] == "group" and weights["group_size"] in (32, 64, 128) and not weights["dynamic"]
    from safetensors import safe_open

    with safe_open(result.weights_dir / "model.safetensors", "pt") as tensors:
        names = set(tensors.keys())
        shape = tensors.get_tensor("model.layers.0.mlp.down_proj.weight_shape").tolist()
        packed = tensors.get_slice("model.layers.0.mlp.down_proj.weight_packed").get_shape()
        scale = tensors.get_slice("model.layers.0.mlp.down_proj.weight_scale")
        assert packed == [shape[0], shape[1] * 4 // 32] and scale.get_shape() == [shape[0], shape[1] // 64]
        assert scale.get_dtype() == {"float16": "F16", "bfloat16": "BF16"}[engine["dtype"]]
        # Zero points packed eight to an int32 along the output rows.
        zero_point = tensors.get_slice("model.layers.0.mlp.down_proj.weight_zero_point")
        assert zero_point.get_dtype() == "I32" and zero_point.get_shape() == [shape[0] // 8, shape[1] // 64]
    parts = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
    for layer in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
        assert {f"model.layers.1.{layer}.{part}" for part in parts} <= names
    assert "model.embed_tokens.weight" in names and not any(name.startswith("lm_head") for name in names)


def _leaves_nothing(root: Path) -> bool:
    return not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (
            {"hidden_size": 96},
            BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, group_size=64),
            r"groups of 64 weights per row, which does not divide the input width of .*\(96 inputs\)",
        ),
        (
            {"hidden_size": 80},
            BuildOptions(mode=Mode.INT8_WEIGHT_ONLY),
            r"groups of 32 weights per row, which does not divide the input width of .*\(80 inputs\)",
        ),
        (
            {"layers": 0},
            BuildOptions(mode=Mode.INT4_WEIGHT_ONLY),
            "quantizes Linear layers and this model has none besides its LM head",
        ),
        (
            {},
            BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, backend=Backend.VLLM, group_size=256),
            "vLLM's integer kernels take groups of 32, 64 or 128",
        ),
    ],
    ids=["group-size", "int8-width", "no-linear-layers", "vllm-group-256"],
)
def test_bad_integer_builds_fail_clearly_and_leave_nothing(
    make: dict[str, int], options: BuildOptions, message: str, tmp_path: Path
) -> None:
    from model_repo_builder.testing import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "llama", **make)
    root = tmp_path / "out"
    with pytest.raises(UnsupportedModeError, match=message):
        build(checkpoint, root, options)
    assert _leaves_nothing(root)


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
    # Measured on the served weights: the pruned zeros survive quantization exactly (round to nearest,
    # symmetric codes; the weighted asymmetric search would move them).
    assert pruning["served_zero_fraction"] >= 0.5
    # int4 has 16 levels, one of them exactly zero, which small weights round to.
    assert dense.report["pruning"]["served_zero_fraction"] < (0.2 if mode is Mode.INT4_WEIGHT_ONLY else 0.01)
    if mode in INTEGER_MODES:
        assert report["quantization"]["recipe"] == "rtn"
        assert next(iter(report["quantization"]["formats"])).startswith(f"int{LAYOUT[mode][0]} group 32 symmetric")
    loaded = load_model(sparse.weights_dir)
    for weight in body_weights(loaded.model):
        assert ((weight == 0).sum(dim=1) >= weight.shape[1] // 2).all()
    # The embedding (and the tied LM head) is not pruned: it comes back as in the dense build.
    tables = []
    for model in (loaded.model, load_model(dense.weights_dir).model):
        table = model.get_input_embeddings().weight
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


def test_the_quality_gate_reads_the_whole_evaluation_text(served_llama) -> None:
    from model_repo_builder.calibration_text import CALIBRATION_TEXT
    from model_repo_builder.eval_text import EVAL_TEXT, PARAGRAPHS

    quality = served_llama.report["quality"]
    tokenizer = load_model(served_llama.weights_dir).tokenizer
    assert quality["eval_tokens"] == len(tokenizer(EVAL_TEXT).input_ids) > 384
    assert quality["eval_predictions"] < quality["eval_tokens"]
    # The calibration text shares no paragraph, and no run of 8 words, with the evaluation text.
    assert not any(paragraph[:60] in CALIBRATION_TEXT for paragraph in PARAGRAPHS)

    def runs(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i : i + 8]) for i in range(len(words) - 7)}

    assert len(runs(CALIBRATION_TEXT)) > 500 and not runs(CALIBRATION_TEXT) & runs(EVAL_TEXT)
    assert json.loads((served_llama.path / "build-report.json").read_text())["quality"] == quality


def test_weights_already_on_a_coarser_grid_are_stored_exactly() -> None:
    """A checkpoint de-quantized from a GGUF file has each group's weights on a grid coarser than int8's
    full range (here: multiples of 2**-7 up to 60 of them); the range search finds a scale that holds
    them exactly, where the scale spanning the range (max|w| / 127) rounds every one of them."""
    import torch

    from model_repo_builder.quantize import quantize_rtn

    generator = torch.Generator().manual_seed(0)
    steps = torch.randint(-60, 61, (64, 256), generator=generator).float()
    steps[:, ::32] = 60  # every group reaches the same largest magnitude
    weight = steps * 2**-7
    stored = quantize_rtn(weight, bits=8, group_size=32, dtype=torch.float16)
    assert torch.equal(stored.dequantize(), weight)
    spanning = (weight.reshape(64, 8, 32).abs().amax(-1, keepdim=True) / 127).half().float()
    rounded = ((weight.reshape(64, 8, 32) / spanning).round() * spanning).reshape(64, 256)
    assert (rounded - weight).abs().max() > 1e-4  # what the range-spanning scale alone would store
