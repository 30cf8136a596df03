"""The bad-input matrix over HTTP: the cases of test_bad_inputs.py, sent as REST requests.

Every case that HTTP can express (V2 infer requests as JSON + binary tensors; vision calls with
one encoded image and their options as query parameters) must get the status the one table maps
its gRPC code to (service/http/status.py) and the same message fragment, and a good request must
succeed after each. Cases HTTP cannot express (several images, tensor images, an empty model name
in a path, typed tensor contents) are listed by id, so a new gRPC case is either converted here or
named as not applicable.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest

from service.http.status import HTTP_STATUS, BodyTooLarge
from service.servicers.v2_parameters import parameters_to_python
from test_bad_inputs import CASES, PHOTO, _png, matrix_server  # noqa: F401 (matrix_server is a fixture)

STATUS_OF_CODE = {cls.code: status for cls, status in HTTP_STATUS.items() if cls is not BodyTooLarge}
STATUS_OF_CODE[grpc.StatusCode.OK] = 200
NOT_EXPRESSIBLE = {
    "no image in the request",
    "image with neither bytes nor tensor",
    "tensor of the wrong dtype",
    "tensor of the wrong rank",
    "tensor of the wrong shape",
    "tensor bytes do not match its shape",
    "NaN tensor",
    "batch larger than max_batch_size",
    "empty model name",
    "too many images per request",
    "mixing typed and raw contents",
}
HTTP_CASES = [case for case in CASES if case[0] not in NOT_EXPRESSIBLE]


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b'{"error": ""}')["error"]


def v2_as_http(request) -> tuple[str, bytes, dict]:
    """A ModelInferRequest as Triton's binary tensor data extension: JSON header, then raw inputs."""
    inputs, blobs = [], []
    for index, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[index]
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    document = {
        "id": request.id,
        "inputs": inputs,
        "outputs": [{"name": o.name, "parameters": parameters_to_python(o.parameters)} for o in request.outputs],
    }
    header = json.dumps(document).encode()
    version = f"/versions/{request.model_version}" if request.model_version else ""
    return (
        f"/v2/models/{request.model_name}{version}/infer",
        header + b"".join(blobs),
        {"Inference-Header-Content-Length": str(len(header))},
    )


def vision_as_http(rpc: str, request) -> tuple[str, bytes, dict]:
    (image,) = request.images
    # HTTP vision calls take encoded images: a valid tensor image (cases about the model or the
    # options, not the image) is sent as an equally valid PNG
    data = image.encoded if image.WhichOneof("source") == "encoded" else _png(PHOTO)
    query = {}
    if rpc == "Classify" and request.top_k:
        query["top_k"] = request.top_k
    if rpc == "Detect":
        params = request.params
        for field in ("score_threshold", "iou_threshold", "max_detections"):
            if params.HasField(field):
                query[field] = getattr(params, field)
        if params.class_filter:
            query["classes"] = ",".join(str(c) for c in params.class_filter)
    suffix = "?" + urllib.parse.urlencode(query) if query else ""
    version = f"/versions/{request.model.version}" if request.model.version else ""
    return f"/v1/models/{request.model.name}{version}/{rpc.lower()}{suffix}", data, {}


def _good_request_succeeds(base: str) -> None:
    assert _post(base + "/v1/models/tiny/classify", _png(PHOTO))[0] == 200
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]})
    assert _post(base + "/v2/models/tiny/infer", body.encode())[0] == 200


def test_every_case_is_converted_or_named():
    names = {case[0] for case in CASES}
    assert NOT_EXPRESSIBLE <= names, sorted(NOT_EXPRESSIBLE - names)
    assert len(HTTP_CASES) >= 15


@pytest.mark.parametrize("name,rpc,factory,code,fragment", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_bad_input_over_http(matrix_server, name, rpc, factory, code, fragment):  # noqa: F811
    server = matrix_server[0]
    request = factory()
    if rpc == "ModelInfer":
        path, body, headers = v2_as_http(request)
    else:
        path, body, headers = vision_as_http(rpc, request)
    status, message = _post(server.http_url + path, body, headers)
    expected = 413 if name == "message over the size limit" else STATUS_OF_CODE[code]
    assert status == expected, f"{name}: expected {expected}, got {status}: {message}"
    assert fragment.lower() in message.lower(), f"{name}: {message!r} lacks {fragment!r}"
    _good_request_succeeds(server.http_url)


HTTP_ONLY = [
    (
        "BYTES elements over the image limit",
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [7], "data": ["x"] * 7}]}).encode(),
        400,
        "over the limit of 6",
    ),
    ("not JSON", "/v2/models/tiny/infer", b"{not json", 400, "not valid JSON"),
    ("JSON nested too deeply", "/v2/models/tiny/infer", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (
        "data of the wrong length",
        "/v2/models/tiny/infer",
        json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 63}]}
        ).encode(),
        400,
        "63 elements",
    ),
    (
        "strings for FP32",
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": ["a", "b"]}]}).encode(),
        400,
        "must be numbers",
    ),
    ("header length past the body", "/v2/models/tiny/infer", b"{}", 400, "Inference-Header-Content-Length"),
    ("binary sizes that do not add up", "/v2/models/tiny/infer", None, 400, "binary bytes"),
    ("unknown vision query parameter", "/v1/models/tiny/classify?topk=3", b"x", 400, "unknown query parameter"),
    ("top_k that is not a number", "/v1/models/tiny/classify?top_k=three", b"x", 400, "top_k must be an integer"),
    ("unknown path", "/v2/nothing/here", b"", 404, "Not Found"),
]


@pytest.mark.parametrize("name,path,body,status,fragment", HTTP_ONLY, ids=[c[0] for c in HTTP_ONLY])
def test_http_only_refusals(matrix_server, name, path, body, status, fragment):  # noqa: F811
    server = matrix_server[0]
    headers = {}
    if name == "header length past the body":
        headers["Inference-Header-Content-Length"] = "99"
    if name == "binary sizes that do not add up":
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 1, 8, 8],
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        ).encode()
        body = header + np.zeros(64, np.float32).tobytes() + b"extra"
        headers["Inference-Header-Content-Length"] = str(len(header))
    got, message = _post(server.http_url + path, body, headers)
    assert got == status, f"{name}: {got}: {message}"
    assert fragment.lower() in message.lower(), message
    _good_request_succeeds(server.http_url)


def test_body_over_the_limit_is_refused_from_content_length(matrix_server):  # noqa: F811
    """4 MiB limit; a 5 MiB Content-Length is refused before the body is read (nothing is sent)."""
    import http.client

    server = matrix_server[0]
    connection = http.client.HTTPConnection("127.0.0.1", server.running.http_port, timeout=10)
    connection.putrequest("POST", "/v2/models/tiny/infer")
    connection.putheader("Content-Length", str(5 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    connection.close()


def test_chunked_body_over_the_limit_is_cut(matrix_server):  # noqa: F811
    """Without Content-Length (chunked), the body is read only up to the limit, then refused."""
    import http.client

    server = matrix_server[0]
    connection = http.client.HTTPConnection("127.0.0.1", server.running.http_port, timeout=30)
    chunks = (b"[" + b"0," * 511 + b"0]" for _ in range(5 * 1024))  # 5 MiB in 1 KiB chunks, over the 4 MiB limit
    connection.request("POST", "/v2/models/tiny/infer", body=chunks, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    connection.close()
