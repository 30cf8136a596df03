"""Bearer-token authentication and TLS / mutual TLS on a real server."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testkit import ServerThread, test_settings
from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc


def _tensor_request() -> vpb.ClassifyRequest:
    tensor = np.zeros((1, 8, 8), dtype=np.float32)
    image = vpb.Image(tensor=vpb.Tensor(shape=[1, 8, 8], dtype="float32", data=tensor.tobytes()))
    return vpb.ClassifyRequest(model=vpb.ModelRef(name="tiny"), images=[image])


@pytest.fixture
def auth_server(tiny_repo, tmp_path):
    (tmp_path / "tokens").write_text("reader-token\nsecond-token\n")
    (tmp_path / "admin").write_text("admin-token\n")
    settings = test_settings(tiny_repo, auth_token_file=tmp_path / "tokens", admin_token_file=tmp_path / "admin")
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_tokens_are_required_and_checked(auth_server):
    with grpc.insecure_channel(auth_server.address) as channel:
        vision = vpb_grpc.VisionServiceStub(channel)
        request = _tensor_request()
        assert _code(lambda: vision.Classify(request, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            _code(lambda: vision.Classify(request, timeout=10, metadata=[("authorization", "Bearer wrong")]))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            _code(lambda: vision.Classify(request, timeout=10, metadata=[("authorization", "Basic reader-token")]))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        for token in ("reader-token", "second-token"):
            reply = vision.Classify(request, timeout=10, metadata=[("authorization", f"Bearer {token}")])
            assert reply.model_name == "tiny"
        frames = iter([vpb.ClassifyFrame(model=vpb.ModelRef(name="tiny"), frame_id=1, image=request.images[0])])
        assert _code(lambda: list(vision.StreamClassify(frames, timeout=10))) == grpc.StatusCode.UNAUTHENTICATED


def test_health_stays_open_and_admin_rpcs_need_the_admin_token(auth_server):
    with grpc.insecure_channel(auth_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        unload = pb.RepositoryModelUnloadRequest(model_name="tiny")
        reader = [("authorization", "Bearer reader-token")]
        assert (
            _code(lambda: v2.RepositoryModelUnload(unload, timeout=10, metadata=reader))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert _code(lambda: v2.RepositoryModelUnload(unload, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert v2.ModelReady(pb.ModelReadyRequest(name="tiny"), timeout=10, metadata=reader).ready
        v2.RepositoryModelUnload(unload, timeout=30, metadata=[("authorization", "Bearer admin-token")])
        assert not v2.ModelReady(pb.ModelReadyRequest(name="tiny"), timeout=10, metadata=reader).ready


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, key, issuer_name, issuer_key, ca: bool, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ca_key = _key()
    ca = _certificate("convserve test CA", ca_key, None, ca_key, ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for name, sans in (
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", []),
    ):
        key = _key()
        cert = _certificate(f"convserve {name}", key, ca.subject, ca_key, ca=False, sans=sans)
        files[f"{name}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{name}.key"] = _pem(key)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_tls_handshake_with_a_test_ca(tiny_repo, pki):
    server = ServerThread(test_settings(tiny_repo, tls_cert=pki / "server.pem", tls_key=pki / "server.key")).start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(server.address, credentials) as channel:
            reply = vpb_grpc.VisionServiceStub(channel).Classify(_tensor_request(), timeout=10)
            assert len(reply.results[0].predictions) == 2
        with grpc.insecure_channel(server.address) as channel:
            assert (
                _code(lambda: vpb_grpc.VisionServiceStub(channel).Classify(_tensor_request(), timeout=5))
                == grpc.StatusCode.UNAVAILABLE
            )
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(tiny_repo, pki):
    settings = test_settings(
        tiny_repo, tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem"
    )
    server = ServerThread(settings).start()
    try:
        ca = (pki / "ca.pem").read_bytes()
        without = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(server.address, without) as channel:
            assert (
                _code(lambda: vpb_grpc.VisionServiceStub(channel).Classify(_tensor_request(), timeout=5))
                == grpc.StatusCode.UNAVAILABLE
            )
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        with grpc.secure_channel(server.address, with_cert) as channel:
            assert vpb_grpc.VisionServiceStub(channel).Classify(_tensor_request(), timeout=10).model_name == "tiny"
    finally:
        server.stop()
