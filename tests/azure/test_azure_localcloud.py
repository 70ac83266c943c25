"""AzureLocalCloud: provisions what a gateway needs, and stop() leaves no process and no state."""

from __future__ import annotations

import os

import pytest

from wardgate.adapters import open_decision_store, open_object_store, open_queue, open_secret_source, open_signer
from wardgate.devtools.localcloud.azure import AzureLocalCloud


@pytest.mark.usefixtures("azure_env")
def test_provisioned_urls_open_with_the_registry(azure_urls):
    assert {"queue", "decision_store", "audit_bucket", "signer", "db_secret"} <= set(azure_urls)
    queue = open_queue(azure_urls["queue"])
    queue.send(b"ping")
    [message] = queue.receive(wait_seconds=2)
    queue.ack(message)
    assert message.body == b"ping"
    assert open_decision_store(azure_urls["decision_store"]).list("nothing-here/") == []
    assert open_object_store(azure_urls["audit_bucket"]).list("nothing-here/") == []
    assert open_signer(azure_urls["signer"]).sign(b"x")
    assert open_secret_source(azure_urls["db_secret"], "u").fetch().password


def test_stop_kills_the_process_groups_and_removes_state(tmp_path):
    cloud = AzureLocalCloud(tmp_path)
    env = cloud.start()
    assert env["AZURE_STORAGE_CONNECTION_STRING"].startswith("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1")
    groups = [process.pid for process in cloud._processes]
    assert len(groups) == 2 and cloud.state_dir.exists()
    cloud.stop()
    for group in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)  # signal 0: does any process of the group remain?
    assert not cloud.state_dir.exists()
    cloud.stop()  # idempotent
