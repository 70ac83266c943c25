"""BlobObjectStore against Azurite's blob service.

Azurite implements no container immutability (it always reports ``hasImmutabilityPolicy: false``,
answers SetImmutabilityPolicy with 501 and lets anyone delete or overwrite a blob), so against plain
Azurite we test what it enforces: the conditional create (``If-None-Match: *``) that refuses an
overwrite, and the adapter's refusal of a non-WORM container. The WORM path itself runs through
``FakeImmutableBlobProxy``, a fake of the service's immutability policy in front of Azurite.
"""

from __future__ import annotations

import re

import pytest
from azure.core.exceptions import ResourceExistsError

from wardgate.adapters import open_object_store
from wardgate.adapters.azure import BlobObjectStore
from wardgate.core.ports import ObjectExists, ObjectStore, StoreUnavailable
from wardgate.devtools.localcloud.azure_fakes import FakeImmutableBlobProxy

pytestmark = pytest.mark.usefixtures("azure_env")


def _container(azure_cloud, unique: str) -> str:
    name = f"c-{unique}"
    azure_cloud.blob_service().create_container(name)
    return name


def test_put_get_list_under_the_url_prefix(azure_cloud, unique):
    container = _container(azure_cloud, unique)
    store = open_object_store(f"azblob://devstoreaccount1/{container}/audit/gw-1?worm=off")
    assert isinstance(store, ObjectStore)
    store.put("2025/seg-2.jsonl", b"two", "application/x-ndjson")
    store.put("2025/seg-1.jsonl", b"one")
    store.put("2025/seg-1.jsonl.digest.json", b"{}", "application/json")
    assert store.get("2025/seg-1.jsonl") == b"one"
    assert store.list() == ["2025/seg-1.jsonl", "2025/seg-1.jsonl.digest.json", "2025/seg-2.jsonl"]
    assert store.list("2025/seg-1") == ["2025/seg-1.jsonl", "2025/seg-1.jsonl.digest.json"]
    blob = azure_cloud.blob_service().get_blob_client(container, "audit/gw-1/2025/seg-2.jsonl")
    assert blob.get_blob_properties().content_settings.content_type == "application/x-ndjson"
    with pytest.raises(KeyError):
        store.get("2025/missing.jsonl")


def test_identical_reput_is_a_no_op_and_different_bytes_are_refused(azure_cloud, unique):
    container = _container(azure_cloud, unique)
    store = BlobObjectStore(f"azblob://devstoreaccount1/{container}?worm=off")
    store.put("seg.jsonl", b"sealed bytes")
    store.put("seg.jsonl", b"sealed bytes")  # a retried shipment after a crash
    with pytest.raises(ObjectExists, match="seg.jsonl"):
        store.put("seg.jsonl", b"rewritten history")
    assert store.get("seg.jsonl") == b"sealed bytes"


def test_the_service_refuses_a_conditional_overwrite_through_the_sdk(azure_cloud, unique):
    container = _container(azure_cloud, unique)
    BlobObjectStore(f"azblob://devstoreaccount1/{container}?worm=off").put("seg.jsonl", b"sealed")
    client = azure_cloud.blob_service().get_container_client(container)
    with pytest.raises(ResourceExistsError):
        client.upload_blob("seg.jsonl", b"forged", overwrite=False)
    assert client.download_blob("seg.jsonl").readall() == b"sealed"


def test_a_container_without_immutability_is_refused(azure_cloud, unique):
    container = _container(azure_cloud, unique)
    with pytest.raises(StoreUnavailable, match=re.escape(f"container '{container}' is not write-once") + ".*worm=off"):
        open_object_store(f"azblob://devstoreaccount1/{container}/audit")


@pytest.mark.parametrize("worm_header", ["x-ms-has-immutability-policy",
                                         "x-ms-immutable-storage-with-versioning-enabled"])
def test_a_worm_container_is_accepted_and_its_blobs_cannot_be_deleted_or_overwritten(
        azure_cloud, unique, worm_header, monkeypatch):
    """Through FakeImmutableBlobProxy (Azurite has no immutability): the adapter reads the real
    container-properties header, accepts the container without ?worm=off, and the SDK's own
    delete and overwrite are refused with BlobImmutableDueToPolicy."""
    container = _container(azure_cloud, unique)
    env = azure_cloud.env()["AZURE_STORAGE_CONNECTION_STRING"]
    blob_port = int(re.search(r"BlobEndpoint=http://127\.0\.0\.1:(\d+)/", env).group(1))
    proxy = FakeImmutableBlobProxy(blob_port, "devstoreaccount1", worm_header)
    try:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           re.sub(r"BlobEndpoint=[^;]+", f"BlobEndpoint={proxy.endpoint}", env))
        store = open_object_store(f"azblob://devstoreaccount1/{container}/audit")
        store.put("seg.jsonl", b"sealed")
        store.put("seg.jsonl", b"sealed")
        from azure.storage.blob import ContainerClient

        client = ContainerClient.from_connection_string(
            re.sub(r"BlobEndpoint=[^;]+", f"BlobEndpoint={proxy.endpoint}", env), container)
        with pytest.raises(ResourceExistsError, match="BlobImmutableDueToPolicy"):
            client.delete_blob("audit/seg.jsonl")
        with pytest.raises(ResourceExistsError, match="BlobImmutableDueToPolicy"):
            client.upload_blob("audit/seg.jsonl", b"forged", overwrite=True)
        assert store.get("seg.jsonl") == b"sealed"
    finally:
        proxy.stop()


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../b"])
def test_keys_that_leave_the_prefix_are_refused(azure_cloud, unique, key):
    store = BlobObjectStore(f"azblob://devstoreaccount1/{_container(azure_cloud, unique)}/p?worm=off")
    with pytest.raises(ValueError, match="leaves the store"):
        store.put(key, b"x")
