"""GcsObjectStore against gcp-storage-emulator.

What the emulator can and cannot show: it keeps a bucket's ``retentionPolicy`` (so the adapter's
refusal of a bucket without one is tested for real), but it enforces neither the retention policy
(it deletes retained objects) nor ``ifGenerationMatch`` (it overwrites). So "the backend refuses an
overwrite or a delete" is GCS's guarantee, not proven here; what is tested is that the adapter
never replaces content it finds, and only writes into buckets that have a retention policy.
"""

from __future__ import annotations

import re
import time

import pytest

from wardgate.adapters.gcp import GcsObjectStore
from wardgate.core.ports import ObjectExists, StoreUnavailable


def test_put_get_list_and_identical_reput(gcp_cloud, unique):
    store = GcsObjectStore(gcp_cloud.create_bucket(unique))
    store.put("2026/seg-1.jsonl", b"events 1\n", "application/x-ndjson")
    store.put("2026/seg-1.jsonl.digest.json", b"{}")
    store.put("2027/seg-9.jsonl", b"events 9\n")
    store.put("2026/seg-1.jsonl", b"events 1\n")  # shipping retried after a crash: a no-op

    assert store.get("2026/seg-1.jsonl") == b"events 1\n"
    assert store.list("2026/") == ["2026/seg-1.jsonl", "2026/seg-1.jsonl.digest.json"]
    assert store.list() == ["2026/seg-1.jsonl", "2026/seg-1.jsonl.digest.json", "2027/seg-9.jsonl"]
    # The URL's prefix is where the objects live in the bucket.
    blob = gcp_cloud.storage_client().bucket(unique).get_blob("audit/2026/seg-1.jsonl")
    assert blob.content_type == "application/x-ndjson"


def test_different_content_under_an_existing_key_is_refused_and_the_original_kept(gcp_cloud, unique):
    store = GcsObjectStore(gcp_cloud.create_bucket(unique))
    store.put("seg-1.jsonl", b"original")
    with pytest.raises(ObjectExists, match="seg-1.jsonl exists with different content"):
        store.put("seg-1.jsonl", b"forged")
    assert store.get("seg-1.jsonl") == b"original"


def test_a_bucket_without_retention_policy_is_refused_unless_worm_is_off(gcp_cloud, unique):
    url = gcp_cloud.create_bucket(unique, retention_seconds=None)
    with pytest.raises(StoreUnavailable, match=f"bucket {unique} has no retention policy"):
        GcsObjectStore(url).put("seg-1.jsonl", b"x")
    assert GcsObjectStore(url).list() == []  # nothing was written

    relaxed = GcsObjectStore(url + "?worm=off")
    relaxed.put("seg-1.jsonl", b"x")
    assert relaxed.get("seg-1.jsonl") == b"x"


def test_a_missing_bucket_or_object_is_named(gcp_cloud, unique):
    with pytest.raises(StoreUnavailable, match=f"bucket {unique} does not exist"):
        GcsObjectStore(f"gs://{unique}/audit").put("k", b"x")
    store = GcsObjectStore(gcp_cloud.create_bucket(unique))
    with pytest.raises(KeyError):
        store.get("never-written")


def test_an_unreachable_endpoint_fails_within_the_timeout(dead_endpoint, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{dead_endpoint}")
    url = "gs://audit-bucket/audit?timeout=2"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=re.escape(f"object store {url}:")):
        GcsObjectStore(url).put("k", b"x")
    with pytest.raises(StoreUnavailable, match=re.escape(f"object store {url}&worm=off:")):
        GcsObjectStore(url + "&worm=off").get("k")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("url, complaint", [
    ("gs:///audit", "missing bucket"),
    ("gs://UPPER/audit", "invalid bucket name"),
    ("gs://bucket/audit?worm=maybe", "worm must be"),
])
def test_bad_urls_are_refused_with_the_wrong_part_named(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        GcsObjectStore(url)


def test_bad_keys_are_refused(gcp_cloud, unique):
    store = GcsObjectStore(gcp_cloud.create_bucket(unique))
    for key in ("", "/etc/passwd"):
        with pytest.raises(ValueError, match="relative name"):
            store.put(key, b"x")
