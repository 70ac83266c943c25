"""AwsLocalCloud's own life cycle: it leaves no process and no state behind."""

from __future__ import annotations

import os
import socket

import pytest

from wardgate.devtools.localcloud.aws import AwsLocalCloud


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_stop_kills_the_emulator_and_removes_its_state(tmp_path):
    cloud = AwsLocalCloud(tmp_path)
    env = cloud.start()
    port, pid = cloud.port, cloud._process.pid
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}" and _answers(port)
    assert list(tmp_path.iterdir()), "moto_server's state dir should be under the workdir"

    cloud.stop()
    assert not _answers(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert list(tmp_path.iterdir()) == []
    cloud.stop()  # idempotent


@pytest.mark.parametrize("prefix", ["", "A", "Upper", "has_underscore", "-dash", "x" * 40])
def test_provision_refuses_prefixes_some_service_would_reject(aws_cloud, prefix):
    with pytest.raises(ValueError, match="prefix"):
        aws_cloud.provision(prefix)


def test_provisioned_urls_cover_every_port(aws_urls):
    assert {"queue", "decision_store", "audit_bucket", "signer", "db_secret"} <= set(aws_urls)
    assert all(url.endswith("region=us-east-1") for url in aws_urls.values())
