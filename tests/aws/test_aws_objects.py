"""S3ObjectStore against moto_server's S3 with Object Lock (GOVERNANCE, 1 day default retention).

moto enforces If-None-Match on PutObject and refuses deletion of a locked version; it does not
enforce S3's object-size or request-rate limits (not relevant here).
"""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from wardgate.adapters import open_object_store
from wardgate.adapters.aws import S3ObjectStore
from wardgate.core.ports import ObjectExists, ObjectStore, StoreUnavailable


def test_put_get_list(aws_urls):
    store = open_object_store(aws_urls["audit_bucket"])
    assert isinstance(store, S3ObjectStore) and isinstance(store, ObjectStore)
    store.put("gw1/0001.jsonl", b'{"seq":1}\n', "application/x-ndjson")
    store.put("gw1/0001.jsonl.digest.json", b"{}")
    store.put("gw2/0001.jsonl", b"other")

    assert store.get("gw1/0001.jsonl") == b'{"seq":1}\n'
    assert store.list() == ["gw1/0001.jsonl", "gw1/0001.jsonl.digest.json", "gw2/0001.jsonl"]
    assert store.list("gw1/") == ["gw1/0001.jsonl", "gw1/0001.jsonl.digest.json"]
    with pytest.raises(KeyError):
        store.get("gw3/0001.jsonl")
    assert (store.retention["Mode"], store.retention["Days"]) == ("GOVERNANCE", 1)


def test_identical_put_is_a_no_op_and_different_content_is_refused(aws_urls):
    store = S3ObjectStore(aws_urls["audit_bucket"])
    store.put("seg", b"sealed bytes")
    store.put("seg", b"sealed bytes")  # shipping retried after a crash
    with pytest.raises(ObjectExists, match="seg exists with different content"):
        store.put("seg", b"forged bytes")
    assert store.get("seg") == b"sealed bytes"


def test_the_bucket_itself_refuses_overwrite_and_deletion(aws_urls, aws_cloud):
    """Going around the adapter with the SDK: a conditional overwrite is refused (412), a deletion
    of the written version is refused (Object Lock), and what S3 does allow (an unconditional put
    makes a *newer* version, a plain delete adds a delete marker) changes nothing wardgate reads."""
    store = S3ObjectStore(aws_urls["audit_bucket"])
    store.put("seg", b"original")
    s3 = aws_cloud.client("s3")
    bucket, key = store.bucket, store.prefix + "seg"
    [version] = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    head = s3.head_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] > version["LastModified"]

    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key=key, Body=b"tampered", IfNoneMatch="*", ChecksumAlgorithm="SHA256")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"

    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    s3.put_object(Bucket=bucket, Key=key, Body=b"tampered", ChecksumAlgorithm="SHA256")
    s3.delete_object(Bucket=bucket, Key=key)  # a delete marker on top
    assert store.get("seg") == b"original"
    assert store.list() == ["seg"]
    with pytest.raises(ObjectExists):
        store.put("seg", b"tampered")


def test_bucket_without_object_lock_is_refused_unless_worm_off(aws_cloud):
    bucket = f"plain-{uuid.uuid4().hex[:8]}"
    aws_cloud.client("s3").create_bucket(Bucket=bucket)
    with pytest.raises(StoreUnavailable, match=f"bucket {bucket} is not write-once"):
        S3ObjectStore(f"s3://{bucket}?region=us-east-1").put("seg", b"x")

    relaxed = S3ObjectStore(f"s3://{bucket}?region=us-east-1&worm=off")
    relaxed.put("seg", b"x")
    with pytest.raises(ObjectExists):  # still create-once: If-None-Match does not need Object Lock
        relaxed.put("seg", b"y")
    assert relaxed.get("seg") == b"x"


def test_object_lock_without_default_retention_is_refused(aws_cloud):
    bucket = f"lock-{uuid.uuid4().hex[:8]}"
    aws_cloud.client("s3").create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    with pytest.raises(StoreUnavailable, match="not write-once"):
        S3ObjectStore(f"s3://{bucket}?region=us-east-1").put("seg", b"x")


def test_prefix_separates_stores_in_one_bucket(aws_urls):
    bucket = aws_urls["audit_bucket"].split("/")[2]
    evidence = S3ObjectStore(f"s3://{bucket}/evidence?region=us-east-1")
    audit = S3ObjectStore(aws_urls["audit_bucket"])
    evidence.put("2025-q1.json", b"{}")
    audit.put("seg", b"x")
    assert evidence.list() == ["2025-q1.json"]
    assert audit.list() == ["seg"]


def test_missing_bucket_is_store_unavailable_naming_the_url():
    with pytest.raises(StoreUnavailable, match=r"object store s3://absent-bucket\?region=us-east-1: NoSuchBucket"):
        S3ObjectStore("s3://absent-bucket?region=us-east-1").list()


@pytest.mark.parametrize(("url", "message"), [
    ("s3://", "s3://: missing bucket name"),
    ("s3://Upper_Case", "not an S3 bucket name"),
    ("s3://bucket?worm=maybe", "worm='maybe': use on or off"),
    ("s3://bucket?acl=public", "unknown parameter 'acl'"),
])
def test_bad_bucket_urls_name_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        S3ObjectStore(url)


def test_keys_that_leave_the_prefix_are_refused(aws_urls):
    store = S3ObjectStore(aws_urls["audit_bucket"])
    for bad in ("", "/abs", "../other/seg", "a/../../b"):
        with pytest.raises(ValueError, match="leaves the prefix"):
            store.put(bad, b"x")
