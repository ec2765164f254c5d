"""Model repositories for gateway tests and benchmarks: a decoupled streaming echo model that follows
the text-generation contract the gateway is written against, and an embedding model."""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

GENERATION_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "messages" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true }},
  {{ name: "stop" data_type: TYPE_STRING dims: [ -1 ] optional: true }}
]
output [
  {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "finish_reason" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "prompt_tokens" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "completion_tokens" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "error" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
model_transaction_policy {{ decoupled: true }}
parameters {{ key: "token_delay_ms" value: {{ string_value: "{delay_ms}" }} }}
parameters {{ key: "events_file" value: {{ string_value: "{events_file}" }} }}
"""

EMBEDDING_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "embedding" data_type: TYPE_FP32 dims: [ 8 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def write_generation_model(
    repository: Path, name: str, *, delay_ms: float = 0.0, events_file: Path | None = None
) -> Path:
    folder = repository / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "model.py", folder / "1" / "model.py")
    config = GENERATION_CONFIG.format(name=name, delay_ms=delay_ms, events_file=events_file or "")
    (folder / "config.pbtxt").write_text(config)
    return folder


def write_embedding_model(repository: Path, name: str) -> Path:
    folder = repository / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "embed.py", folder / "1" / "model.py")
    (folder / "config.pbtxt").write_text(EMBEDDING_CONFIG.format(name=name))
    return folder
