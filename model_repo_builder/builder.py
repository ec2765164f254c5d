"""`build()`: checkpoint in, Triton model repository and build-report.json out.

Layout of one build, `<output_root>/<key>/`:
    build-report.json
    repository/<model_name>/config.pbtxt
    repository/<model_name>/1/...            (model.py + batchline_runtime.py, or vLLM's model.json)
    repository/<model_name>/1/weights/       (config, tokenizer, weights, batchline-weights.json)
    repository/<model_name>/warmup/          (python backend: warmup request files)
The build runs in a hidden folder next to its final place and is renamed into it only once it
passed the quality gate, so a failed or interrupted build leaves no key folder behind.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import runtime
from .checkpoint import Checkpoint, ModelKind, hash_files, inspect_checkpoint
from .content_key import compute_content_key
from .errors import CheckpointError, UnsupportedModeError
from .options import DEFAULT_THRESHOLDS, PACKED_MODES, Backend, BuildOptions, Mode
from .prune import prune_model, zero_fraction
from .quality import check_gate, evaluate
from .quantize import (
    calibration_batches,
    calibration_hessians,
    check_integer_layout,
    check_supported,
    fp8_weight_proxy,
    quantize_model,
)
from .report import REPORT_FILE, REPOSITORY_DIR, SCHEMA_VERSION, library_versions, read_report, write_report
from .runtime import conv1d_to_linear
from .triton_config import WARMUP_FOLDER, python_model_config, render_config, uses_inflight_engine, warmup_files
from .version import BUILDER_VERSION
from .vllm_layout import check_tensor_parallel, check_vllm_quantization, write_vllm_model
from .weights import save_weights, weight_bytes

TEMPLATE = Path(__file__).parent / "templates" / "model.py"
INFLIGHT_TEMPLATE = Path(__file__).parent / "templates" / "model_inflight.py"


@dataclass(frozen=True)
class BuildResult:
    key: str
    path: Path
    report: dict[str, Any]
    reused: bool = False

    @property
    def repository(self) -> Path:
        """The folder to pass to tritonserver --model-repository."""
        return self.path / REPOSITORY_DIR

    @property
    def model_name(self) -> str:
        return str(self.report["options"]["model_name"])

    @property
    def weights_dir(self) -> Path:
        return self.repository / self.model_name / "1" / "weights"


def build(source: str | Path, output_root: str | Path, options: BuildOptions | None = None) -> BuildResult:
    """Builds `source` (a folder or `hf://org/name@revision`) into `output_root/<key>`.

    A key that is already built is returned as it is (`reused=True`). Raises a BuildError subclass,
    leaving nothing behind, when the checkpoint, the mode or the quality is not right.
    """
    options = options or BuildOptions()
    check_supported(Mode.NONE if options.mode is Mode.FP32 else options.mode, options.backend)
    checkpoint = inspect_checkpoint(str(source))
    check_tensor_parallel(options, checkpoint.config)
    check_vllm_quantization(options)
    if options.backend is Backend.VLLM and checkpoint.kind is not ModelKind.CAUSAL_LM:
        raise UnsupportedModeError("the vLLM layout serves text generation; build encoders with --backend python")
    key = compute_content_key(checkpoint.file_hashes, options)
    root = Path(output_root)
    final = root / key
    if (final / REPORT_FILE).is_file():
        return BuildResult(key, final, read_report(final), reused=True)
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    staging.chmod(0o755)
    try:
        report = _build_into(staging, checkpoint, key, options)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        if (final / REPORT_FILE).is_file():
            # A concurrent build of the same key won the rename; its result is identical.
            return BuildResult(key, final, read_report(final), reused=True)
        raise
    return BuildResult(key, final, report)


def _load_reference(checkpoint: Checkpoint, device: str) -> runtime.LoadedModel:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    auto = AutoModelForCausalLM if checkpoint.kind is ModelKind.CAUSAL_LM else AutoModel
    try:
        model: Any = auto.from_pretrained(checkpoint.path, dtype=torch.float32)
        model = model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    except Exception as exc:
        raise CheckpointError(f"cannot load the checkpoint in {checkpoint.path}: {exc}") from exc
    return runtime.prepare(model, tokenizer, str(checkpoint.kind), {})


def _unique_fp32_bytes(model: torch.nn.Module) -> int:
    tensors = {id(tensor): tensor for tensor in model.state_dict(keep_vars=True).values()}
    return sum(tensor.numel() * 4 for tensor in tensors.values())


def _build_into(staging: Path, checkpoint: Checkpoint, key: str, options: BuildOptions) -> dict[str, Any]:
    started = time.perf_counter()
    vllm_fp8 = options.backend is Backend.VLLM and options.mode is Mode.FP8
    device = "cuda" if options.mode is Mode.FP8 and not vllm_fp8 else "cpu"
    reference = _load_reference(checkpoint, device)
    candidate = copy.deepcopy(reference.model)
    pruning = prune_model(candidate, options.sparsity)
    # vLLM quantizes fp8 itself at load time; the repository carries bf16 weights for it. none stores the
    # checkpoint's dtype where it is served on GPUs, float32 on CPU; fp32 float32 (options.float_mode).
    mode = Mode.BF16 if vllm_fp8 else options.float_mode(checkpoint.dtype)
    # none judged by the limits of the precision it stores (a bf16 checkpoint served in bf16: bf16's).
    thresholds = options.quality or DEFAULT_THRESHOLDS[options.float_mode(checkpoint.dtype)]
    hessians, converted = None, False
    if mode in PACKED_MODES:
        # Refused before the calibration pass: a group size that does not divide a layer, no Linear layers.
        converted = conv1d_to_linear(candidate) > 0
        check_integer_layout(candidate, mode, options.group_size)
        if pruning.layers == 0:
            hessians = calibration_hessians(candidate, calibration_batches(reference))
    summary = quantize_model(
        candidate, mode, options.group_size, pruned=pruning.layers > 0, hessians=hessians, converted=converted
    )
    model_dir = staging / REPOSITORY_DIR / options.model_name
    weights_dir = model_dir / "1" / "weights"
    save_weights(candidate, reference.tokenizer, weights_dir, str(checkpoint.kind), str(options.mode), summary)
    quantization = summary.to_dict()
    del candidate, summary
    # The gate measures what Triton will load: the weights read back from the repository, run the
    # way the served model.py runs them.
    served = runtime.load_model(weights_dir, device)
    measured_on = "weights reloaded from the repository"
    if mode in PACKED_MODES and options.backend is Backend.PYTHON:
        measured_on += ", de-quantized to float32 at load as served"  # runtime.load_model, as model.py does
    if vllm_fp8:
        fp8_weight_proxy(served.model)
        measured_on = "CPU proxy: fp8 weights (torchao Float8WeightOnlyConfig); vLLM also quantizes activations"
    metrics = evaluate(reference, served)
    check_gate(metrics, thresholds, str(options.mode))
    if options.backend is Backend.VLLM:
        write_vllm_model(model_dir, options, checkpoint.dtype)
    else:
        _write_python_model(model_dir, checkpoint.kind, options, int(reference.model.config.hidden_size))
    fp32_bytes = _unique_fp32_bytes(reference.model)
    stored_bytes = weight_bytes(weights_dir)
    report = {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "builder_version": BUILDER_VERSION,
        "source": {
            "source": checkpoint.source,
            "path": str(checkpoint.path),
            "kind": str(checkpoint.kind),
            "architecture": checkpoint.architecture,
            "files": checkpoint.file_hashes,
        },
        "options": options.to_dict(),
        "quantization": quantization,
        "pruning": {**pruning.to_dict(), "served_zero_fraction": zero_fraction(served.model)},
        "quality": {
            **metrics,
            "thresholds": dataclasses.asdict(thresholds),
            "passed": True,
            "measured_on": measured_on,
        },
        "size": {
            "source_weights_bytes": checkpoint.weights_bytes,
            "fp32_weights_bytes": fp32_bytes,
            "quantized_weights_bytes": stored_bytes,
            "compression_ratio": checkpoint.weights_bytes / stored_bytes,
            "compression_ratio_vs_fp32": fp32_bytes / stored_bytes,
        },
        "repository": {
            "path": REPOSITORY_DIR,
            "model_name": options.model_name,
            "backend": str(options.backend),
            "gpu_only": options.backend is Backend.VLLM or options.mode is Mode.FP8,
            "files": hash_files(staging / REPOSITORY_DIR),
        },
        "build_seconds": time.perf_counter() - started,
        "versions": library_versions(),
    }
    write_report(staging, report)
    return read_report(staging)


def _write_python_model(model_dir: Path, kind: ModelKind, options: BuildOptions, hidden_size: int) -> None:
    (model_dir / "config.pbtxt").write_text(render_config(python_model_config(kind, options, hidden_size)))
    shutil.copyfile(runtime.__file__, model_dir / "1" / "batchline_runtime.py")
    if uses_inflight_engine(kind, options):
        shutil.copyfile(INFLIGHT_TEMPLATE, model_dir / "1" / "model.py")
        shutil.copyfile(Path(__file__).parent / "engine.py", model_dir / "1" / "batchline_engine.py")
        return
    shutil.copyfile(TEMPLATE, model_dir / "1" / "model.py")
    if options.warmup:
        (model_dir / WARMUP_FOLDER).mkdir()
        for name, content in warmup_files(kind).items():
            (model_dir / WARMUP_FOLDER / name).write_bytes(content)
