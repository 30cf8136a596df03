"""HTTP's bearer-token auth (the policy gRPC uses) and the system shared-memory REST endpoints.

Auth: without a token or with a wrong one, 401; repository load/unload with a normal token, 403
when admin tokens are configured; health and the console stay open; the same token works over
gRPC and HTTP. Shared memory: tritonclient.http registers a real POSIX object, reads its status
and unregisters it; gRPC sees the same regions.
"""

from __future__ import annotations

import uuid

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from testkit import ServerThread, test_settings, write_tiny_model


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    write_tiny_model(root / "repo")
    (root / "tokens").write_text("user-token\n")
    (root / "admin").write_text("admin-token\n")
    settings = test_settings(
        root / "repo", http_port=0, auth_token_file=root / "tokens", admin_token_file=root / "admin"
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.http_url.removeprefix("http://"))


def _headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refused(call, status: str, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status and fragment in caught.value.message(), caught.value


def test_tokens_are_checked_like_grpc(secured):
    client = _client(secured)
    assert client.is_server_live() and client.is_server_ready()  # health stays open for probes
    _refused(lambda: client.get_model_metadata("tiny"), "401", "missing bearer token")
    _refused(lambda: client.get_model_metadata("tiny", headers=_headers("wrong")), "401", "invalid bearer token")
    assert client.get_model_metadata("tiny", headers=_headers("user-token"))["name"] == "tiny"
    _refused(lambda: client.unload_model("tiny", headers=_headers("user-token")), "403", "admin token")
    client.unload_model("tiny", headers=_headers("admin-token"))
    client.load_model("tiny", headers=_headers("admin-token"))
    assert client.is_model_ready("tiny", headers=_headers("user-token"))
    grpc_client = triton_grpc.InferenceServerClient(secured.address)
    assert grpc_client.get_model_metadata("tiny", headers={"authorization": "Bearer user-token"}).name == "tiny"
    grpc_client.close()


def test_console_page_is_open(secured):
    import urllib.request

    with urllib.request.urlopen(secured.http_url + "/", timeout=10) as response:
        assert response.status == 200 and b"convserve console" in response.read()


def test_system_shared_memory_over_http(tiny_repo):
    server = ServerThread(test_settings(tiny_repo, http_port=0)).start()
    key = f"/convserve_http_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("r1", key, 1024)
    try:
        client = _client(server)
        client.register_system_shared_memory("r1", key, 1024)
        assert client.get_system_shared_memory_status() == [{"name": "r1", "key": key, "offset": 0, "byte_size": 1024}]
        assert client.get_system_shared_memory_status("r1")[0]["byte_size"] == 1024
        grpc_client = triton_grpc.InferenceServerClient(server.address)
        assert "r1" in grpc_client.get_system_shared_memory_status(as_json=True)["regions"]  # the same registry
        grpc_client.close()
        _refused(lambda: client.register_system_shared_memory("r1", key, 1024), "409", "already registered")
        client.unregister_system_shared_memory("r1")
        assert client.get_system_shared_memory_status() == []
        _refused(lambda: client.get_system_shared_memory_status("r1"), "400", "no system shared-memory region")
    finally:
        shm.destroy_shared_memory_region(handle)
        server.stop()


def test_shutting_down_refuses_new_calls_but_not_health(tiny_repo):
    """As over gRPC: once the shutdown grace period is over, new calls get 503 and the same message."""
    import urllib.error
    import urllib.request

    server = ServerThread(test_settings(tiny_repo, http_port=0)).start()
    try:
        server.running.lifecycle.serving = False
        server.running.lifecycle.accepting = False
        client = _client(server)
        assert client.is_server_live() and not client.is_server_ready()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.http_url + "/v2/models/tiny", timeout=10)
        assert caught.value.code == 503 and b"shutting down" in caught.value.read()
    finally:
        server.running.lifecycle.serving = server.running.lifecycle.accepting = True
        server.stop()


def test_inference_through_shared_memory_over_http(tiny_repo):
    """tritonclient.http's set_shared_memory for an input and an output: the output region holds
    what the plain HTTP path answers."""
    import numpy as np
    from tritonclient.http import InferInput, InferRequestedOutput

    server = ServerThread(test_settings(tiny_repo, http_port=0)).start()
    data = np.random.default_rng(2).random((2, 1, 8, 8), dtype=np.float32)
    keys = [f"/convserve_http_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    handles = [shm.create_shared_memory_region(k[1:], k, size) for k, size in zip(keys, (data.nbytes, 2 * 3 * 4))]
    try:
        client = _client(server)
        shm.set_shared_memory_region(handles[0], [data])
        for key, size in zip(keys, (data.nbytes, 24)):
            client.register_system_shared_memory(key[1:], key, size)
        tensor = InferInput("input", list(data.shape), "FP32")
        tensor.set_shared_memory(keys[0][1:], data.nbytes)
        output = InferRequestedOutput("logits")
        output.set_shared_memory(keys[1][1:], 24)
        result = client.infer("tiny", [tensor], outputs=[output])
        (described,) = result.get_response()["outputs"]
        assert described == {"name": "logits", "datatype": "FP32", "shape": [2, 3]}  # the data is in the region
        from_region = shm.get_contents_as_numpy(handles[1], np.float32, [2, 3])
        plain = InferInput("input", list(data.shape), "FP32")
        plain.set_data_from_numpy(data)
        np.testing.assert_array_equal(from_region, client.infer("tiny", [plain]).as_numpy("logits"))
        tensor.set_shared_memory(keys[0][1:], data.nbytes - 4)
        _refused(lambda: client.infer("tiny", [tensor]), "400", "shared_memory_byte_size")
        client.unregister_system_shared_memory()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
        server.stop()
