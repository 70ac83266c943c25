"""Fakes of Cloud KMS and Secret Manager, for the local cloud and tests (Google ships no emulator).

They are fakes of the *wire API*: plaintext gRPC servers that speak the real services' protobuf
messages (``google.cloud.kms_v1`` / ``google.cloud.secretmanager_v1`` types), so the real SDK clients
talk to them unchanged through a channel to ``127.0.0.1:PORT``. Only the RPCs wardgate and its local
cloud use are implemented; anything else answers ``UNIMPLEMENTED``. State is in memory.

- :class:`FakeCloudKms`: CreateKeyRing, CreateCryptoKey (ASYMMETRIC_SIGN with EC_SIGN_P256_SHA256 or
  EC_SIGN_ED25519; version 1 is created with a fresh private key from ``cryptography``), GetPublicKey,
  AsymmetricSign (with the CRC32C integrity fields the real service fills in).
- :class:`FakeSecretManager`: CreateSecret, AddSecretVersion, AccessSecretVersion (``latest`` = the
  most recently created version, as in the API), DisableSecretVersion.

Run both in a process of their own: ``python -m wardgate.devtools.localcloud.gcp_fakes --kms-port N
--secretmanager-port M`` (what :class:`wardgate.devtools.localcloud.gcp.GcpLocalCloud` does).
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import google_crc32c
import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from google.cloud import kms_v1, secretmanager_v1
from google.protobuf import timestamp_pb2

_Handler = Callable[[Any, grpc.ServicerContext], Any]


def _unary(request_type: Any, response_type: Any, function: _Handler) -> grpc.RpcMethodHandler:
    # proto-plus message classes (de)serialize themselves: the wire format is the real one.
    return grpc.unary_unary_rpc_method_handler(function, request_deserializer=request_type.deserialize,
                                               response_serializer=response_type.serialize)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


# ------------------------------------------------------------------------------------------------ KMS

_Algorithm = kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm


@dataclass
class _KeyVersion:
    algorithm: Any
    private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class FakeCloudKms:
    """A fake of ``google.cloud.kms.v1.KeyManagementService`` (asymmetric signing only), in memory."""

    SERVICE = "google.cloud.kms.v1.KeyManagementService"

    def __init__(self) -> None:
        self._key_rings: set[str] = set()
        self._keys: dict[str, kms_v1.CryptoKey] = {}
        self._versions: dict[str, _KeyVersion] = {}
        self._lock = threading.Lock()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(self.SERVICE, {
            "CreateKeyRing": _unary(kms_v1.CreateKeyRingRequest, kms_v1.KeyRing, self.create_key_ring),
            "CreateCryptoKey": _unary(kms_v1.CreateCryptoKeyRequest, kms_v1.CryptoKey, self.create_crypto_key),
            "GetPublicKey": _unary(kms_v1.GetPublicKeyRequest, kms_v1.PublicKey, self.get_public_key),
            "AsymmetricSign": _unary(kms_v1.AsymmetricSignRequest, kms_v1.AsymmetricSignResponse,
                                     self.asymmetric_sign),
        })

    def create_key_ring(self, request: kms_v1.CreateKeyRingRequest, context: grpc.ServicerContext) -> kms_v1.KeyRing:
        name = f"{request.parent}/keyRings/{request.key_ring_id}"
        with self._lock:
            if name in self._key_rings:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"KeyRing {name} already exists.")
            self._key_rings.add(name)
        return kms_v1.KeyRing(name=name, create_time=_now())

    def create_crypto_key(self, request: kms_v1.CreateCryptoKeyRequest,
                          context: grpc.ServicerContext) -> kms_v1.CryptoKey:
        name = f"{request.parent}/cryptoKeys/{request.crypto_key_id}"
        algorithm = request.crypto_key.version_template.algorithm
        if request.crypto_key.purpose != kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this fake only creates ASYMMETRIC_SIGN keys")
        if algorithm == _Algorithm.EC_SIGN_P256_SHA256:
            private_key: Any = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == _Algorithm.EC_SIGN_ED25519:
            private_key = ed25519.Ed25519PrivateKey.generate()
        else:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"this fake does not implement {algorithm.name}")
        with self._lock:
            if request.parent not in self._key_rings:
                context.abort(grpc.StatusCode.NOT_FOUND, f"KeyRing {request.parent} not found.")
            if name in self._keys:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"CryptoKey {name} already exists.")
            key = kms_v1.CryptoKey(request.crypto_key, name=name, create_time=_now())
            self._keys[name] = key
            self._versions[f"{name}/cryptoKeyVersions/1"] = _KeyVersion(algorithm, private_key)
        return key

    def _version(self, name: str, context: grpc.ServicerContext) -> _KeyVersion:
        with self._lock:
            version = self._versions.get(name)
        if version is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {name} not found.")
        return version

    def get_public_key(self, request: kms_v1.GetPublicKeyRequest, context: grpc.ServicerContext) -> kms_v1.PublicKey:
        version = self._version(request.name, context)
        pem = version.public_pem()
        return kms_v1.PublicKey(pem=pem, algorithm=version.algorithm, pem_crc32c=google_crc32c.value(pem.encode()),
                                name=request.name, protection_level=kms_v1.ProtectionLevel.SOFTWARE)

    def asymmetric_sign(self, request: kms_v1.AsymmetricSignRequest,
                        context: grpc.ServicerContext) -> kms_v1.AsymmetricSignResponse:
        version = self._version(request.name, context)
        response = kms_v1.AsymmetricSignResponse(name=request.name, protection_level=kms_v1.ProtectionLevel.SOFTWARE)
        if version.algorithm == _Algorithm.EC_SIGN_P256_SHA256:
            digest = request.digest.sha256
            if len(digest) != 32:  # the real service insists on a SHA-256 digest for this algorithm
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The request digest must be a SHA-256 digest.")
            if request.digest_crc32c is not None:
                if request.digest_crc32c != google_crc32c.value(digest):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  "The checksum in field digest_crc32c did not match.")
                response.verified_digest_crc32c = True
            signature = version.private_key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        else:
            data = request.data
            if request.data_crc32c is not None:
                if request.data_crc32c != google_crc32c.value(data):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The checksum in field data_crc32c did not match.")
                response.verified_data_crc32c = True
            signature = version.private_key.sign(data)
        response.signature = signature
        response.signature_crc32c = google_crc32c.value(signature)
        return response


# ------------------------------------------------------------------------------------- Secret Manager


@dataclass
class _Secret:
    versions: list[tuple[bytes, bool]] = field(default_factory=list)  # (payload, enabled), version = index + 1


class FakeSecretManager:
    """A fake of ``google.cloud.secretmanager.v1.SecretManagerService`` (versions of secrets), in memory."""

    SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"

    def __init__(self) -> None:
        self._secrets: dict[str, _Secret] = {}
        self._lock = threading.Lock()

    def handler(self) -> grpc.GenericRpcHandler:
        sm = secretmanager_v1
        return grpc.method_handlers_generic_handler(self.SERVICE, {
            "CreateSecret": _unary(sm.CreateSecretRequest, sm.Secret, self.create_secret),
            "AddSecretVersion": _unary(sm.AddSecretVersionRequest, sm.SecretVersion, self.add_secret_version),
            "AccessSecretVersion": _unary(sm.AccessSecretVersionRequest, sm.AccessSecretVersionResponse,
                                          self.access_secret_version),
            "DisableSecretVersion": _unary(sm.DisableSecretVersionRequest, sm.SecretVersion,
                                           self.disable_secret_version),
        })

    def create_secret(self, request: Any, context: grpc.ServicerContext) -> secretmanager_v1.Secret:
        name = f"{request.parent}/secrets/{request.secret_id}"
        if "replication" not in request.secret:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Secret.replication is required.")
        with self._lock:
            if name in self._secrets:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{name}] already exists.")
            self._secrets[name] = _Secret()
        return secretmanager_v1.Secret(request.secret, name=name, create_time=_now())

    def add_secret_version(self, request: Any, context: grpc.ServicerContext) -> secretmanager_v1.SecretVersion:
        data = bytes(request.payload.data)
        if "data_crc32c" in request.payload and request.payload.data_crc32c != google_crc32c.value(data):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Checksum mismatch: data_crc32c.")
        with self._lock:
            secret = self._secrets.get(request.parent)
            if secret is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Secret [{request.parent}] not found.")
            secret.versions.append((data, True))
            number = len(secret.versions)
        return secretmanager_v1.SecretVersion(name=f"{request.parent}/versions/{number}", create_time=_now(),
                                              state=secretmanager_v1.SecretVersion.State.ENABLED)

    def _resolve(self, name: str, context: grpc.ServicerContext) -> tuple[_Secret, int]:
        """(secret, 1-based version number) for ``…/secrets/S/versions/V``, V a number or ``latest``."""
        secret_name, _, version = name.rpartition("/versions/")
        with self._lock:
            secret = self._secrets.get(secret_name)
            if secret is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Secret [{secret_name}] not found or has no versions.")
            if version == "latest":  # the most recently created version, whatever its state (as the API)
                if not secret.versions:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"Secret [{secret_name}] has no versions.")
                return secret, len(secret.versions)
        if not version.isdigit() or not 1 <= int(version) <= len(secret.versions):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{name}] not found.")
        return secret, int(version)

    def access_secret_version(self, request: Any, context: grpc.ServicerContext) -> Any:
        secret, number = self._resolve(request.name, context)
        data, enabled = secret.versions[number - 1]
        secret_name = request.name.rpartition("/versions/")[0]
        if not enabled:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"Secret Version [{secret_name}/versions/{number}] is in DISABLED state.")
        return secretmanager_v1.AccessSecretVersionResponse(
            name=f"{secret_name}/versions/{number}",
            payload=secretmanager_v1.SecretPayload(data=data, data_crc32c=google_crc32c.value(data)))

    def disable_secret_version(self, request: Any, context: grpc.ServicerContext) -> Any:
        secret, number = self._resolve(request.name, context)
        with self._lock:
            secret.versions[number - 1] = (secret.versions[number - 1][0], False)
        return secretmanager_v1.SecretVersion(name=f"{request.name.rpartition('/versions/')[0]}/versions/{number}",
                                              state=secretmanager_v1.SecretVersion.State.DISABLED)


# ------------------------------------------------------------------------------------------- serving


def serve(handler: grpc.GenericRpcHandler, port: int) -> grpc.Server:
    """Start a plaintext gRPC server for one fake on 127.0.0.1:``port``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Cloud KMS and Secret Manager gRPC servers (loopback).")
    parser.add_argument("--kms-port", type=int, required=True)
    parser.add_argument("--secretmanager-port", type=int, required=True)
    args = parser.parse_args(argv)
    servers = [serve(FakeCloudKms().handler(), args.kms_port),
               serve(FakeSecretManager().handler(), args.secretmanager_port)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"fake KMS on 127.0.0.1:{args.kms_port}, fake Secret Manager on 127.0.0.1:{args.secretmanager_port}",
          flush=True)
    stop.wait()
    for server in servers:
        server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
