"""A non-decoupled Triton python model with Batchline's embedding interface: text_input in,
a unit-length `embedding` (8 floats, a function of the text) out."""

import os
import site
import sys

# The python backend stub embeds an interpreter that ignores PYTHONPATH; honour it (for numpy).
for _path in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path not in sys.path:
        site.addsitedir(_path)

import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)
            rows = []
            for text in texts:
                digest = hashlib.sha256(text if isinstance(text, bytes) else str(text).encode()).digest()
                vector = np.frombuffer(digest, dtype=np.uint8)[:8].astype(np.float32) + 1.0
                rows.append(vector / np.linalg.norm(vector))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("embedding", np.stack(rows).astype(np.float32))]))
        return responses
