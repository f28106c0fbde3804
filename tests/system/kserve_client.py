"""kserve's InferenceRESTClient against a running service, run by tests/system/test_oip_clients.py with the Python of
kserve's own venv (requirements/kserve.txt; tests/run.sh makes it). It imports nothing of the project: it takes the
service's URL and a picture's path, calls the service the way a kserve user would, and prints what it got as one JSON
object for the test to judge.

    python tests/system/kserve_client.py http://127.0.0.1:8000 digit.png
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import kserve
import numpy as np
from kserve.protocol.infer_type import RequestedOutput


async def infer(client: Any, base: str, request: Any) -> dict[str, Any]:
    """An inference answer as plain JSON: each output's datatype, shape and elements, the response's parameters, and
    whether it came with binary tensor data (its Inference-Header-Content-Length)."""
    headers: dict[str, str] = {}
    response = await client.infer(base, request, model_name=request.model_name, response_headers=headers)
    outputs = {
        o.name: {"datatype": o.datatype, "shape": list(o.shape), "data": o.as_numpy().ravel().tolist()}
        for o in response.outputs
    }
    binary = "inference-header-content-length" in {k.lower() for k in headers}
    return {"outputs": outputs, "parameters": dict(response.parameters or {}), "binary": binary}


async def refused(call: Any) -> dict[str, Any]:
    """The status and message of a call the service must refuse."""
    try:
        await call
    except httpx.HTTPStatusError as e:
        return {"status": e.response.status_code, "message": str(e)}
    return {"status": 200, "message": ""}


async def main(base: str, picture: bytes) -> dict[str, Any]:
    got: dict[str, Any] = {}
    async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60)) as client:
        got["live"] = await client.is_server_live(base)
        got["ready"] = await client.is_server_ready(base)
        models = ("digits-generate", "digits-encode", "fashion-generate")
        got["models_ready"] = {m: await client.is_model_ready(base, m) for m in models}
        for way, binary in (("json", False), ("binary", True)):
            label = kserve.InferInput("label", [4], "INT64")
            label.set_data_from_numpy(np.full(4, 3, dtype=np.int64), binary_data=binary)
            request = kserve.InferRequest(
                "digits-generate",
                [label],
                parameters={"seed": 9},
                request_outputs=[RequestedOutput(name, {"binary_data": binary}) for name in ("image", "latent")],
            )
            got[f"generate_{way}"] = await infer(client, base, request)

            image = kserve.InferInput("image", [1], "BYTES")
            element = picture if binary else base64.b64encode(picture)
            image.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=binary)
            request = kserve.InferRequest(
                "digits-encode", [image], parameters={"binary_data_output": binary} if binary else None
            )
            got[f"encode_{way}"] = await infer(client, base, request)

        unseeded = kserve.InferRequest("digits-generate", [kserve.InferInput("label", [2], "INT64", data=[7, 7])])
        got["generate_unseeded"] = await infer(client, base, unseeded)

        wrong = kserve.InferRequest("digits-generate", [kserve.InferInput("label", [1], "INT64", data=[12])])
        got["wrong_label"] = await refused(client.infer(base, wrong, model_name="digits-generate"))
        got["unknown_model"] = await refused(client.infer(base, wrong, model_name="fashion-generate"))
    return got


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("picture", type=Path, help="a picture /encode accepts, sent to digits-encode")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.url, args.picture.read_bytes()))))
