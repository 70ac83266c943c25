"""Development TLS material for listeners that have no configured certificate.

A private CA (``dev-ca.pem``) is created once in the state directory and signs a server certificate
for the requested names, so clients can verify the gateway fully:
``psql "sslmode=verify-full sslrootcert=<state_dir>/dev-ca.pem host=127.0.0.1 ..."``. The CA is kept
across restarts; only the server certificate is re-issued when the names change or it nears expiry, so
a client's ``sslrootcert`` keeps working.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wardgate.core.files import replace_file_atomically

CA_CERT_NAME = "dev-ca.pem"
CA_KEY_NAME = "dev-ca-key.pem"
SERVER_CERT_NAME = "dev-server.pem"
SERVER_KEY_NAME = "dev-server-key.pem"
_LOCK_NAME = ".dev-tls.lock"

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=7)
# Backdated so that a client whose clock is a little behind still accepts a fresh certificate.
_BACKDATE = datetime.timedelta(minutes=5)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DevCertificate:
    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_dev_certificate(
    state_dir: Path,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    *,
    now: datetime.datetime | None = None,
) -> DevCertificate:
    """Return a dev CA and a server certificate for ``hostnames`` and ``ips``, creating or renewing
    them as needed. Idempotent, and safe when several processes start at once."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dns_names = {name.lower() for name in hostnames}
    ip_addresses = {ipaddress.ip_address(ip) for ip in ips}
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one hostname or IP address")
    result = DevCertificate(
        ca_file=state_dir / CA_CERT_NAME,
        cert_file=state_dir / SERVER_CERT_NAME,
        key_file=state_dir / SERVER_KEY_NAME,
    )
    with _exclusive_lock(state_dir / _LOCK_NAME):
        ca_cert, ca_key = _load_or_create_ca(state_dir, now)
        current = _current_server_certificate(result, ca_cert)
        if current is not None:
            covered_names, covered_ips = _subject_alternative_names(current)
            if (
                dns_names <= covered_names
                and ip_addresses <= covered_ips
                and current.not_valid_after_utc - RENEW_BEFORE > now
            ):
                return result
            # Keep the names already covered: listeners asking for different names must not take
            # turns re-issuing the certificate at every start.
            dns_names |= covered_names
            ip_addresses |= covered_ips
        _issue_server_certificate(result, ca_cert, ca_key, dns_names, ip_addresses, now)
    return result


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load_or_create_ca(
    state_dir: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = state_dir / CA_CERT_NAME, state_dir / CA_KEY_NAME
    try:
        ca_cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        pass
    else:
        if (
            isinstance(ca_key, ec.EllipticCurvePrivateKey)
            and ca_cert.public_key() == ca_key.public_key()
            and ca_cert.not_valid_after_utc - RENEW_BEFORE > now
        ):
            return ca_cert, ca_key

    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wardgate"),
            # Unique per CA, so a browser or OS trust store can tell two dev CAs apart.
            x509.NameAttribute(NameOID.COMMON_NAME, f"wardgate dev CA {secrets.token_hex(4)}"),
        ]
    )
    public_key = ca_key.public_key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # Key first: a CA certificate on disk always has its key next to it.
    replace_file_atomically(key_path, _private_pem(ca_key), 0o600)
    replace_file_atomically(cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_cert, ca_key


def _current_server_certificate(paths: DevCertificate, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The server certificate on disk if it was issued by this CA and matches the key beside it."""
    try:
        cert = x509.load_pem_x509_certificate(paths.cert_file.read_bytes())
        key = serialization.load_pem_private_key(paths.key_file.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    return cert if cert.public_key() == key.public_key() else None


def _subject_alternative_names(cert: x509.Certificate) -> tuple[set[str], set[_IPAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return {name.lower() for name in san.get_values_for_type(x509.DNSName)}, set(san.get_values_for_type(x509.IPAddress))


def _issue_server_certificate(
    paths: DevCertificate,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: set[str],
    ip_addresses: set[_IPAddress],
    now: datetime.datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(dns_names)]
    alternative_names += [x509.IPAddress(ip) for ip in sorted(ip_addresses, key=lambda ip: (ip.version, ip))]
    common_name = sorted(dns_names)[0] if dns_names else str(min(ip_addresses, key=lambda ip: (ip.version, ip)))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        # Never outlive the CA: clients would reject the chain from that day on.
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    replace_file_atomically(paths.key_file, _private_pem(key), 0o600)
    replace_file_atomically(paths.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


