"""The GCP local cloud for the tests in this directory: started once, stopped at the end.

Cloud Storage, Pub/Sub and Firestore are Google's emulators (real wire protocols); Cloud KMS and
Secret Manager are wardgate's gRPC fakes (``wardgate.devtools.localcloud.gcp_fakes``) driven through
the real SDK clients. The emulators' variables are set in ``os.environ`` for the session, because
the adapters find emulators the way the SDKs do: through the environment.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from wardgate.devtools.localcloud.gcp import GcpLocalCloud
from wardgate.devtools.pgserver import free_port


def pytest_configure(config: pytest.Config) -> None:
    # google-api-core warns on import that its Python 3.11 support ends in 2027: not this test's concern.
    config.addinivalue_line("filterwarnings", "ignore:You are using a Python version:FutureWarning")


@pytest.fixture(scope="session")
def gcp_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpLocalCloud]:
    cloud = GcpLocalCloud(tmp_path_factory.mktemp("gcp"))
    env = cloud.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield cloud
    finally:
        cloud.stop()


@pytest.fixture(scope="session")
def gcp_urls(gcp_cloud: GcpLocalCloud) -> dict[str, str]:
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
