"""Triton python-backend model written by Batchline's model_repo_builder.

Loads the quantized weights in ./weights through batchline_runtime.py (copied next to this file) and
runs each dynamic batch as one forward pass (embeddings) or one generate call (text generation).
"""

import os
import site
import sys

# The python backend stub embeds an interpreter that ignores PYTHONPATH; honour it here so that a
# virtualenv's packages (torch, transformers, torchao) can be used.
for _path in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path not in sys.path:
        site.addsitedir(_path)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import batchline_runtime as runtime  # noqa: E402
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        self.loaded, params = runtime.load_instance(args, os.path.dirname(os.path.abspath(__file__)))
        self.default_max_tokens = int(params.get("default_max_tokens", "64"))

    def _parse(self, request):
        text_input = _optional(request, "text_input")
        if text_input is None or text_input.size != 1:
            raise ValueError("text_input is required and holds one string")
        prompt = _text(text_input[0])
        if not prompt:
            raise ValueError("text_input must not be empty")
        if self.loaded.kind == runtime.EMBEDDING:
            return prompt, None
        max_tokens = _optional(request, "max_tokens")
        temperature = _optional(request, "temperature")
        top_p = _optional(request, "top_p")
        stop = _optional(request, "stop")
        settings = (
            int(max_tokens[0]) if max_tokens is not None else self.default_max_tokens,
            float(temperature[0]) if temperature is not None else 0.0,
            float(top_p[0]) if top_p is not None else 1.0,
            [_text(item) for item in stop] if stop is not None else [],
        )
        if settings[0] < 1:
            raise ValueError(f"max_tokens must be at least 1, got {settings[0]}")
        if settings[1] < 0:
            raise ValueError(f"temperature must not be negative, got {settings[1]}")
        if not 0 < settings[2] <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {settings[2]}")
        return prompt, settings

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for index, request in enumerate(requests):
            try:
                good.append((index, *self._parse(request)))
            except (ValueError, UnicodeDecodeError) as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if good:
            try:
                outputs = self._run([item[1] for item in good], [item[2] for item in good])
            except Exception as exc:
                outputs = [pb_utils.TritonError(f"batch of {len(good)} failed: {exc}")] * len(good)
            for (index, _, _), output in zip(good, outputs, strict=True):
                if isinstance(output, pb_utils.TritonError):
                    responses[index] = pb_utils.InferenceResponse(error=output)
                else:
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[output])
        return responses

    def _run(self, prompts, settings):
        if self.loaded.kind == runtime.EMBEDDING:
            vectors = runtime.embed(self.loaded, prompts)
            return [pb_utils.Tensor("embedding", vector[None, :].astype(np.float32)) for vector in vectors]
        texts = runtime.generate(
            self.loaded,
            prompts,
            max_tokens=[item[0] for item in settings],
            temperature=[item[1] for item in settings],
            top_p=[item[2] for item in settings],
            stops=[item[3] for item in settings],
        )
        return [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_)) for text in texts]
