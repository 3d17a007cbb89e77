"""TLS and mutual TLS from PEM files, with certificates made for the test."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fenliu.client import Client, Status, Unavailable
from fenliu.server.config import Config
from fenliu.server.rpc.app import ServerThread


def self_signed(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    """A self-signed certificate for 127.0.0.1 (its own CA): cert path, key path, cert PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / f"{name}.crt").write_bytes(cert_pem)
    (directory / f"{name}.key").write_bytes(key_pem)
    return directory / f"{name}.crt", directory / f"{name}.key", cert_pem


def test_tls_serves_verified_clients_only(tmp_path: Path) -> None:
    cert, key, pem = self_signed(tmp_path, "server")
    config = Config(shards=1, grace_s=1, tls_cert=str(cert), tls_key=str(key))
    with ServerThread(config) as server:
        tls = grpc.ssl_channel_credentials(root_certificates=pem)
        with Client(server.target, tls=tls, retries=0) as fenliu:
            agent = fenliu.register_agent("tls-shop", "alice", status=Status.ONLINE)
            assert agent.agent_id == "alice"
        with Client(server.target, retries=0, timeout=2) as plain, pytest.raises(Unavailable):
            plain.list_team("tls-shop")


def test_mutual_tls_needs_a_client_certificate(tmp_path: Path) -> None:
    cert, key, pem = self_signed(tmp_path, "server")
    client_cert, client_key, client_pem = self_signed(tmp_path, "client")
    config = Config(
        shards=1, grace_s=1, tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(client_cert)
    )
    with ServerThread(config) as server:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pem,
            private_key=client_key.read_bytes(),
            certificate_chain=client_pem,
        )
        with Client(server.target, tls=with_cert, retries=0) as fenliu:
            fenliu.register_agent("mtls-shop", "alice")
        without = grpc.ssl_channel_credentials(root_certificates=pem)
        with Client(server.target, tls=without, retries=0, timeout=2) as anonymous:
            with pytest.raises(Unavailable):
                anonymous.list_team("mtls-shop")


def test_an_unreadable_certificate_is_named(tmp_path: Path) -> None:
    _, key, _ = self_signed(tmp_path, "server")
    config = Config(shards=1, tls_cert=str(tmp_path / "missing.crt"), tls_key=str(key))
    with pytest.raises(RuntimeError) as info:
        with ServerThread(config):
            pass
    assert "tls_cert: cannot read" in str(info.value.__cause__)
