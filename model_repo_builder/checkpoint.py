"""Finds and checks a Hugging Face-format checkpoint: a local folder or `hf://org/name@revision`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UnsupportedArchitectureError

HF_SCHEME = "hf://"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
# Encoders served as sentence embedders (mean pooling); decoders go through the causal-LM list.
ENCODER_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra"})
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# safetensors header dtypes of the float formats, and their bytes per element
_SAFETENSORS_FLOATS = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}


class ModelKind(StrEnum):
    CAUSAL_LM = "causal-lm"
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    source: str
    config: dict[str, Any]
    kind: ModelKind
    architecture: str
    # Relative path -> sha256 of every non-hidden file; the build key is made from these.
    file_hashes: dict[str, str]

    @property
    def weight_files(self) -> list[Path]:
        return _weight_files(self.path)

    @property
    def weights_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.weight_files)

    @property
    def dtype(self) -> str:
        """The checkpoint's float precision: config.json's `dtype` (`torch_dtype` before transformers 4.56),
        else the float dtype holding most bytes in the safetensors files, else float32 (as transformers loads)."""
        for field in ("dtype", "torch_dtype"):
            declared = str(self.config.get(field) or "").removeprefix("torch.")
            if declared in FLOAT_DTYPES:
                return declared
        return _safetensors_dtype(self.path) or "float32"


def resolve_source(source: str) -> Path:
    """A local folder as it is, or an `hf://` reference fetched through huggingface_hub's cache."""
    if source.startswith(HF_SCHEME):
        return _download(source)
    path = Path(source).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    return path.resolve()


def parse_hf_reference(source: str) -> tuple[str, str]:
    """`hf://org/name@revision` -> (`org/name`, `revision`); the revision defaults to `main`."""
    body = source.removeprefix(HF_SCHEME)
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{source!r} is not of the form hf://org/name@revision")
    return repo_id, revision or "main"


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _download(source: str) -> Path:
    from huggingface_hub import snapshot_download

    repo_id, revision = parse_hf_reference(source)
    offline = _hub_offline()
    try:
        folder = snapshot_download(
            repo_id, revision=revision, token=os.environ.get("HF_TOKEN") or None, local_files_only=offline
        )
    except Exception as exc:
        where = "offline mode (HF_HUB_OFFLINE) and it is not in the local cache" if offline else str(exc)
        raise CheckpointError(f"cannot fetch {repo_id}@{revision} from the Hugging Face Hub: {where}") from exc
    return Path(folder)


def inspect_checkpoint(source: str) -> Checkpoint:
    """Resolves the source and checks that it is complete, readable and of a supported architecture."""
    path = resolve_source(source)
    config = _read_config(path)
    kind, architecture = classify(config)
    if not _weight_files(path):
        raise CheckpointError(f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")
    _check_safetensors_headers(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return Checkpoint(path, source, config, kind, architecture, hash_files(path))


def classify(config: dict[str, Any]) -> tuple[ModelKind, str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.get("architectures") or []
    model_type = config.get("model_type", "")
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    for architecture in architectures:
        if architecture in causal:
            return ModelKind.CAUSAL_LM, architecture
    if model_type in ENCODER_MODEL_TYPES and not config.get("is_decoder", False):
        return ModelKind.EMBEDDING, architectures[0] if architectures else model_type
    raise UnsupportedArchitectureError(
        f"architecture {architectures or model_type!r} is not supported: the builder serves causal LMs "
        f"(e.g. LlamaForCausalLM, GPT2LMHeadModel) and encoders of type {sorted(ENCODER_MODEL_TYPES)}"
    )


def hash_files(path: Path) -> dict[str, str]:
    hashes = {}
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            hashes[relative.as_posix()] = sha256_file(file)
    return hashes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a JSON object")
    return config


def _weight_files(path: Path) -> list[Path]:
    return sorted(file for pattern in WEIGHT_PATTERNS for file in path.glob(pattern))


def _safetensors_dtype(path: Path) -> str | None:
    """The float dtype with the most bytes over the safetensors headers (8-byte length, then JSON)."""
    counts: dict[str, int] = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            with file.open("rb") as handle:
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        except (OSError, ValueError):
            continue
        for name, tensor in header.items():
            if name != "__metadata__" and (found := _SAFETENSORS_FLOATS.get(tensor.get("dtype", ""))):
                elements = 1
                for size in tensor.get("shape", []):
                    elements *= int(size)
                counts[found[0]] = counts.get(found[0], 0) + elements * found[1]
    return max(counts, key=lambda dtype: counts[dtype]) if counts else None


def _check_safetensors_headers(path: Path) -> None:
    from safetensors import safe_open

    for file in path.glob("*.safetensors"):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise CheckpointError(f"weights file {file.name} is corrupt: {exc}") from exc
