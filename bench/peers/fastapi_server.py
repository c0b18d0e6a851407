"""A hand-written FastAPI + uvicorn server speaking just enough of the v2 protocol.

POST /v2/models/mlp/infer (JSON tensors, or the binary-tensor extension with the
``Inference-Header-Content-Length`` header) and GET /v2/health/ready. The model runs once
per request, inline in the handler (no batching, no thread hop: one core).

    python fastapi_server.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp_model import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, MLP  # noqa: E402

HEADER_LENGTH = "inference-header-content-length"

app = FastAPI()
model = MLP()


@app.get("/v2/health/ready")
async def ready() -> Response:
    return Response(status_code=200)


@app.post(f"/v2/models/{MODEL_NAME}/infer")
async def infer(request: Request) -> Response:
    body = await request.body()
    header_len = request.headers.get(HEADER_LENGTH)
    json_len = int(header_len) if header_len is not None else len(body)
    req = orjson.loads(body[:json_len])
    tensor = next(t for t in req["inputs"] if t["name"] == INPUT_NAME)
    shape = tensor["shape"]
    if "binary_data_size" in tensor.get("parameters", {}):
        x = np.frombuffer(body, dtype=np.float32, count=int(np.prod(shape)), offset=json_len)
    else:
        x = np.asarray(tensor["data"], dtype=np.float32)
    y = model(x.reshape(shape))
    wanted = {o["name"]: o for o in req.get("outputs", [])}
    binary = wanted.get(OUTPUT_NAME, {}).get("parameters", {}).get("binary_data", False)
    out: dict = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(y.shape)}
    if not binary:
        out["data"] = y.ravel().tolist()
        return Response(orjson.dumps({"model_name": MODEL_NAME, "outputs": [out]}),
                        media_type="application/json")
    raw = y.astype(np.float32).tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    head = orjson.dumps({"model_name": MODEL_NAME, "outputs": [out]})
    return Response(head + raw, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, loop="uvloop", http="httptools")
