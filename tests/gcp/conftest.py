"""The GCP adapter tests, on the session's GCP local cloud (``gcp_cloud``, from ``cloud_fixtures``).

Cloud Storage, Pub/Sub and Firestore are Google's emulators (real wire protocols); Cloud KMS and
Secret Manager are wardgate's gRPC fakes (``wardgate.devtools.localcloud.gcp_fakes``) driven through
the real SDK clients. The adapters find emulators the way the SDKs do, through the environment: every
test here that uses the cloud gets its variables, for that test only.
"""

from __future__ import annotations

import uuid

import pytest

from wardgate.devtools.pgserver import free_port


@pytest.fixture(autouse=True)
def _emulator_env(request: pytest.FixtureRequest) -> None:
    # Only tests that use the cloud: the URL-parsing and token tests here run without the emulators.
    if "gcp_cloud" in request.fixturenames:
        request.getfixturevalue("gcp_env")


@pytest.fixture(scope="session")
def gcp_urls(gcp_cloud) -> dict[str, str]:
    """The resources ``provision`` creates, once per session."""
    return gcp_cloud.provision("wardgate")


@pytest.fixture
def unique() -> str:
    """A fresh resource-name stem (Pub/Sub and bucket names must start with a letter)."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def dead_endpoint() -> str:
    """host:port on loopback where nothing listens (free a moment ago)."""
    return f"127.0.0.1:{free_port()}"
