"""KServe's own Python client (``kserve.InferenceRESTClient``, protocol v2) against a running
service, run in ``.venv-kserve`` (``scripts/venv.sh kserve``) by the client tests:

    .venv-kserve/bin/python tests/service/kserve_client.py BASE_URL MODEL ROWS_JSON json|binary

Prints one JSON object: the health answers and every output tensor as a list. The client is used as
its documentation shows it, with its defaults; in binary mode the input and both outputs travel as
binary tensor data.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def main(base: str, model: str, rows: np.ndarray, binary: bool) -> dict[str, object]:
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        live = await client.is_server_live(base)
        ready = await client.is_server_ready(base)
        model_ready = await client.is_model_ready(base, model)
        tensor = InferInput("float_input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = (
            [RequestedOutput(name, parameters={"binary_data": True}) for name in ("probabilities", "label")]
            if binary
            else None
        )
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_outputs=outputs)
        response = await client.infer(base, request, model_name=model)
        return {
            "live": live,
            "ready": ready,
            "model_ready": model_ready,
            "model_name": response.model_name,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
        }
    finally:
        await client.close()


if __name__ == "__main__":
    base_url, model_name, rows_json, mode = sys.argv[1:5]
    data = np.asarray(json.loads(rows_json), dtype=np.float32)
    print(json.dumps(asyncio.run(main(base_url, model_name, data, mode == "binary"))))
