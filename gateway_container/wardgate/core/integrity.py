"""Signed segment digests: what makes the audit trail tamper-evident as a whole.

Inside a session, events form a SHA-256 hash chain (``core/audit.py``). That chain cannot show that a
whole segment, or a whole session, was deleted. So every segment, when it is sealed, gets a *digest*
written next to it (``<segment>.digest.json``, mode 0440): the SHA-256 of the sealed file, a summary
of each session in it (first/last ``seq``, hash of its last event line, whether it ended), and the
name and SHA-256 of the previous digest, signed with the gateway's signing key (Ed25519, a local key
file by default; a cloud KMS key implements :class:`Signer` later). Digests therefore form a chain
too, in the manner of CloudTrail log-file integrity validation.

Chaining across restarts: a spool continues from the newest digest already in the directory (largest
``signed_at``, then name), so a restarted gateway extends the chain and deleting everything a
previous run wrote is detected as a broken chain. A chain starts (``previous_digest`` null) only
in a directory that has no digest yet; ``wardgate audit verify`` accepts several chain starts (two
gateways started at once in an empty directory) — every digest is signed, so a start cannot be
forged without the key. Gateways sharing a directory may fork the chain (two digests naming the same
previous one); verify accepts forks.

Public keys are exported once into the trail as ``keys/<key_id>.pem``, so verification needs only the
copied directory. Those keys are only as trustworthy as the directory: ``wardgate audit verify
--trusted-key`` pins the key(s) to accept.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from wardgate.core.files import create_file_atomically

DIGEST_FORMAT_VERSION = 1
DIGEST_SUFFIX = ".digest.json"
KEYS_DIRECTORY = "keys"
ALGORITHM_ED25519 = "Ed25519"
# Cloud KMS keys that sign with ECDSA on P-256 (AWS KMS ECC_NIST_P256, Cloud KMS EC_SIGN_P256_SHA256,
# Key Vault ES256): the signature is DER-encoded (r, s) over SHA-256 of the canonical bytes.
ALGORITHM_ECDSA_P256 = "ECDSA_P256_SHA256"
ALGORITHMS = (ALGORITHM_ED25519, ALGORITHM_ECDSA_P256)
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
GENESIS_HASH = "0" * 64


@runtime_checkable
class Signer(Protocol):
    """Signs segment digests. ``key_id`` names the public key in ``keys/<key_id>.pem``."""

    key_id: str
    algorithm: str

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


def ed25519_key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_id(public_key: PublicKey) -> str:
    """The id a trail names a key by: SHA-256 of the raw Ed25519 key, or of an EC key's
    SubjectPublicKeyInfo DER, first 16 hex digits."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ed25519_key_id(public_key)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


class LocalEd25519Signer:
    """An Ed25519 private key in a local file (PKCS#8 PEM, mode 0600, created if missing)."""

    algorithm = ALGORITHM_ED25519

    def __init__(self, key_file: Path):
        self.key_file = Path(key_file)
        if not self.key_file.exists():
            self.key_file.parent.mkdir(parents=True, exist_ok=True)
            pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            create_file_atomically(self.key_file, pem, 0o600)
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{self.key_file} does not hold an Ed25519 private key; delete it to generate a new one")
        self._key = key
        self.key_id = ed25519_key_id(key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a digest's signature covers: every field but ``signature``, canonical JSON."""
    unsigned = {k: v for k, v in fields.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def digest_path_for(segment: Path) -> Path:
    return segment.with_name(segment.name + DIGEST_SUFFIX)


def segment_name_of_digest(digest_name: str) -> str:
    return digest_name[: -len(DIGEST_SUFFIX)] if digest_name.endswith(DIGEST_SUFFIX) else digest_name


def gateway_of_segment(name: str) -> str:
    """``<stamp>-<gateway>-<number>.jsonl`` → gateway id."""
    parts = name.removesuffix(".jsonl").split("-")
    return "-".join(parts[1:-1]) if len(parts) >= 3 else ""


def segment_number(name: str) -> int:
    try:
        return int(name.removesuffix(".jsonl").rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def summarize_segment(data: bytes) -> dict[str, Any]:
    """Event count, time range and per-session summary of a segment's bytes (see :func:`build_digest`)."""
    end = data.find(b"\x00")
    events = 0
    first_time = last_time = None
    sessions: dict[str, dict[str, Any]] = {}
    for line in (data if end < 0 else data[:end]).splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
            session, seq = event["session"], event["seq"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a torn write: not an event (verify reports it)
        events += 1
        time = event.get("time")
        if time is not None:
            first_time = time if first_time is None else min(first_time, time)
            last_time = time if last_time is None else max(last_time, time)
        line_hash = hashlib.sha256(line).hexdigest()
        summary = sessions.get(session)
        if summary is None:
            sessions[session] = summary = {"first_seq": seq, "last_seq": seq, "last_hash": line_hash,
                                           "ended": False}
        summary["last_seq"], summary["last_hash"] = seq, line_hash
        if event.get("type") == "session.ended":
            summary["ended"] = True
    return {"events": events, "first_time": first_time, "last_time": last_time, "sessions": sessions}


def build_digest(segment: Path, data: bytes | None, *, gateway: str, signer: Signer, previous_name: str | None,
                 previous_sha256: str | None, signed_at: str, recovered: bool = False,
                 sealed_by: str | None = None, summary: dict[str, Any] | None = None,
                 segment_sha256: str | None = None) -> dict[str, Any]:
    """``summary`` and ``segment_sha256``: what :func:`summarize_segment` and SHA-256 would find in
    ``data``, when the writer kept them as it wrote (reading a full segment back costs the gateway
    more than hashing it as it goes, and parsing it ~5 µs per event); None computes them here from
    ``data``, which may be None only when both are given."""
    if data is None and (summary is None or segment_sha256 is None):
        raise ValueError("build_digest needs the segment's bytes unless its summary and hash are given")
    record: dict[str, Any] = {
        "v": DIGEST_FORMAT_VERSION,
        "segment": segment.name,
        "segment_sha256": segment_sha256 if segment_sha256 is not None else hashlib.sha256(data).hexdigest(),
        **(summary if summary is not None else summarize_segment(data)),
        "previous_digest": previous_name,
        "previous_digest_sha256": previous_sha256,
        "gateway": gateway,
        "key_id": signer.key_id,
        "algorithm": signer.algorithm,
        "signed_at": signed_at,
    }
    if recovered:
        record["recovered"] = True  # sealed by recover() of a later gateway (the writer had died)
        record["sealed_by"] = sealed_by
    record["signature"] = base64.b64encode(signer.sign(canonical(record))).decode()
    return record


def encode_digest(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def export_public_key(directory: Path, signer: Signer) -> Path:
    """Write ``keys/<key_id>.pem`` (0444) into the trail unless it is there."""
    keys = directory / KEYS_DIRECTORY
    path = keys / f"{signer.key_id}.pem"
    if not path.exists():
        keys.mkdir(parents=True, exist_ok=True)
        create_file_atomically(path, signer.public_key_pem(), 0o444)
    return path


def newest_digest(directory: Path) -> tuple[str, str] | None:
    """(name, sha256 of its bytes) of the digest a new digest should chain to, or None."""
    best: tuple[str, str, str] | None = None  # (signed_at, name, sha256)
    for path in directory.glob("*" + DIGEST_SUFFIX):
        try:
            data = path.read_bytes()
            signed_at = str(orjson.loads(data).get("signed_at", ""))
        except (OSError, orjson.JSONDecodeError, AttributeError):
            continue
        candidate = (signed_at, path.name, hashlib.sha256(data).hexdigest())
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return None if best is None else (best[1], best[2])


def load_public_key(pem: bytes) -> PublicKey:
    """An Ed25519 or ECDSA P-256 public key (PEM SubjectPublicKeyInfo); anything else is refused."""
    key = serialization.load_pem_public_key(pem)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("not an Ed25519 or ECDSA P-256 public key")


def verify_signature(record: dict[str, Any], key: PublicKey) -> bool:
    """The record's signature over its canonical bytes, with the algorithm it names, which must be
    the key's own (an Ed25519 key never vouches for an ECDSA signature, nor the reverse)."""
    algorithm = record.get("algorithm")
    try:
        signature = base64.b64decode(str(record.get("signature", "")), validate=True)
        if algorithm == ALGORITHM_ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, canonical(record))
            return True
        if algorithm == ALGORITHM_ECDSA_P256 and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, canonical(record), ec.ECDSA(hashes.SHA256()))
            return True
        return False
    except (InvalidSignature, ValueError):
        return False
