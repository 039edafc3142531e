"""The Python-backend ``model.py`` of the local Triton (tests and ``bench/service.py``).

The ``tritonserver`` of the nvidia-pytriton wheel has only the Python backend, so this model runs
the same ``model.onnx`` with ONNX Runtime inside Triton; the GPU host runs Triton's onnxruntime
backend on the same file and the same ``config.pbtxt`` (``components/triton_repo.py``), apart from
the ``backend``/``platform`` line and the instance kind. It is copied to
``<repository>/<model>/1/model.py`` and runs in Triton's stub process (``.venv-triton``, numpy<2),
not in the test process.

Dynamic batching hands ``execute`` several requests at once: they are merged into one ONNX Runtime
run and split back, as the onnxruntime backend does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [name for name, _ in self.outputs if name not in graph_outputs]
        if missing:
            raise pb_utils.TritonModelException(f"config.pbtxt outputs {missing} are not outputs of {path}")

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        names = [name for name, _ in self.outputs]
        results = self.session.run(names, {self.input_name: batch})
        responses = []
        start = 0
        for array in arrays:
            end = start + len(array)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start:end]).astype(dtype, copy=False))
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def finalize(self) -> None:
        self.session = None
