"""Dev TLS material: real handshakes on loopback, verified the way psql's sslmode=verify-full does."""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from wardgate.tlsdev import DevCertificate, ensure_dev_certificate, server_ssl_context


def handshake(certificate: DevCertificate, server_hostname: str, *, ca_file: Path | None = None) -> bytes:
    """Connect to a TLS server on 127.0.0.1 presenting ``certificate``, verifying it against the dev
    CA (or ``ca_file``) for ``server_hostname``; return what the server sent."""
    server_context = server_ssl_context(certificate.cert_file, certificate.key_file)
    client_context = ssl.create_default_context(cafile=str(ca_file or certificate.ca_file))
    assert client_context.check_hostname and client_context.verify_mode == ssl.CERT_REQUIRED

    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve_one() -> None:
            connection, _ = listener.accept()
            try:
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass  # the client refused us; the client side reports it

        server = threading.Thread(target=serve_one)
        server.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    return tls.recv(5)
        finally:
            server.join(timeout=5)


@pytest.fixture
def certificate(tmp_path: Path) -> DevCertificate:
    return ensure_dev_certificate(tmp_path / "state")


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_handshake_verifies_against_the_dev_ca(certificate: DevCertificate, hostname: str) -> None:
    assert handshake(certificate, hostname) == b"hello"


def test_handshake_fails_for_a_name_the_certificate_does_not_cover(certificate: DevCertificate) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="[Hh]ostname mismatch|doesn't match"):
        handshake(certificate, "db.example.com")


def test_handshake_fails_without_trusting_the_dev_ca(certificate: DevCertificate, tmp_path: Path) -> None:
    other = ensure_dev_certificate(tmp_path / "other")

    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(certificate, "localhost", ca_file=other.ca_file)


def test_files_are_in_the_state_directory_with_private_keys_owner_only(certificate: DevCertificate, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert certificate.ca_file == state_dir / "dev-ca.pem"
    assert certificate.cert_file.parent == state_dir and certificate.key_file.parent == state_dir
    for key in (certificate.key_file, state_dir / "dev-ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_server_certificate_is_for_tls_servers(certificate: DevCertificate) -> None:
    cert = x509.load_pem_x509_certificate(certificate.cert_file.read_bytes())

    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=364) < lifetime < datetime.timedelta(days=366)


def test_second_call_reuses_everything(certificate: DevCertificate, tmp_path: Path) -> None:
    before = [path.read_bytes() for path in (certificate.ca_file, certificate.cert_file, certificate.key_file)]

    again = ensure_dev_certificate(tmp_path / "state")

    assert again == certificate
    assert [path.read_bytes() for path in (again.ca_file, again.cert_file, again.key_file)] == before


def test_new_hostname_reissues_the_server_certificate_under_the_same_ca(certificate: DevCertificate, tmp_path: Path) -> None:
    ca_before = certificate.ca_file.read_bytes()
    cert_before = certificate.cert_file.read_bytes()

    updated = ensure_dev_certificate(tmp_path / "state", hostnames=["gateway.internal"], ips=["127.0.0.1"])

    assert updated.ca_file.read_bytes() == ca_before
    assert updated.cert_file.read_bytes() != cert_before
    assert handshake(updated, "gateway.internal") == b"hello"
    # Names covered before stay covered, so clients already configured keep working.
    assert handshake(updated, "localhost") == b"hello"


def test_certificate_expiring_within_a_week_is_renewed(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    old = ensure_dev_certificate(tmp_path, now=now - datetime.timedelta(days=360))
    ca_before = old.ca_file.read_bytes()
    cert_before = old.cert_file.read_bytes()

    renewed = ensure_dev_certificate(tmp_path, now=now)

    assert renewed.ca_file.read_bytes() == ca_before
    assert renewed.cert_file.read_bytes() != cert_before
    cert = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
    assert cert.not_valid_after_utc > now + datetime.timedelta(days=300)


def test_server_context_refuses_tls_below_1_2(certificate: DevCertificate) -> None:
    context = server_ssl_context(certificate.cert_file, certificate.key_file)

    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
