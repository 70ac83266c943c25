"""Azure Functions (Python v2 model) timer: scheduled rotation of the ``azure-kv://`` secrets.

``register(app)`` adds the timer trigger on ``%WARDGATE_ROTATION_SCHEDULE%`` to the app that
``functions/azure_app.py`` builds. Each run, for every ``azure-kv://`` secret in
``WARDGATE_ROTATION_RESOURCES``:

* retire what is due: once ``grace_seconds`` have passed since the last rotation, the previous role's
  password is removed and the previous secret version disabled;
* rotate when the current value is ``rotate_days`` old (or was never rotated by wardgate): a new
  password on the other role, a login with it, then a new secret version.

The old credential thus stops working at the first run after the grace: the infra runs it hourly
(``0 30 * * * *``), so within an hour of the grace. One secret's failure
does not stop the others; the run fails at the end, naming every failed secret.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from functions.key_rotation.handler import (Database, PendingInMemory, Rotation, RotationError, StoredSecret,
                                            load_targets, now_utc)
from wardgate.adapters.azure import _keyvault_options, _vault_and_names, _vault_url

SCHEDULE_SETTING = "%WARDGATE_ROTATION_SCHEDULE%"

log = logging.getLogger("wardgate.key_rotation")


def secret_client(vault: str) -> Any:
    """A ``SecretClient`` for the vault, configured like the gateway's adapter (managed identity in
    Azure; the local fake vault when ``WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE`` is set)."""
    from azure.keyvault.secrets import SecretClient

    return SecretClient(_vault_url(vault, "azure-kv"), **_keyvault_options(None))


class KeyVaultStore(PendingInMemory):
    """:class:`handler.SecretStore` on one Key Vault secret: ``current`` is its current version; the
    pending value stays in memory until :meth:`promote` sets it as a new version."""

    def __init__(self, client: Any, secret: str, url: str):
        self._client = client
        self._secret = secret
        self.name = url

    def _get(self, version: str | None) -> StoredSecret | None:
        try:
            bundle = self._client.get_secret(self._secret, version)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 403 and version is not None:
                return None  # Key Vault refuses to read a disabled version
            raise RotationError(f"Key Vault secret {self.name}: {exc.reason or exc}") from None
        except AzureError as exc:
            raise RotationError(f"Key Vault secret {self.name}: {exc}") from None
        if bundle.value is None or bundle.properties.enabled is False:
            return None
        return StoredSecret(bundle.properties.version, bundle.value)

    def current(self) -> StoredSecret:
        stored = self._get(None)
        if stored is None:
            raise RotationError(f"Key Vault secret {self.name} has no current value: set the first credential")
        return stored

    def version(self, version_id: str) -> StoredSecret | None:
        return self._get(version_id)

    def promote(self, token: str) -> None:
        pending = self.pending(token)
        if pending is None:
            raise RotationError(f"Key Vault secret {self.name}: nothing pending under {token}")
        try:
            self._client.set_secret(self._secret, pending.text, content_type="application/json")
        except AzureError as exc:
            raise RotationError(f"Key Vault secret {self.name}: cannot set the new version: {exc}") from None
        self._pending = None

    def disable(self, version_id: str) -> None:
        try:
            self._client.update_secret_properties(self._secret, version_id, enabled=False)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise RotationError(f"Key Vault secret {self.name}: cannot disable version {version_id}: {exc}") from None


def run_scheduled(*, now: datetime | None = None,
                  client_for: Callable[[str], Any] = secret_client) -> dict[str, str]:
    """One timer run over every ``azure-kv://`` secret; returns ``{secret URL: outcome}``."""
    now = now or now_utc()
    outcomes: dict[str, str] = {}
    failures: list[str] = []
    for url, target in sorted(load_targets().items()):
        if not url.startswith("azure-kv://"):
            continue
        try:
            vault, path = _vault_and_names(url, "azure-kv", "secret", 1)
            rotation = Rotation(KeyVaultStore(client_for(vault), path[0], url), target, Database(target))
            retired = rotation.retire_due(now)
            if rotation.rotation_due(now):
                outcomes[url] = f"rotated to {rotation.rotate(now)}"
            else:
                outcomes[url] = f"retired {retired}" if retired else "nothing due"
        except (RotationError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
            outcomes[url] = "failed"
        log.info("key rotation %s: %s", url, outcomes[url])
    if failures:
        raise RotationError("key rotation failed for " + "; ".join(failures))
    return outcomes


def register(app: Any) -> None:
    """Add the rotation timer to the Function App (called from ``functions/azure_app.py``)."""
    import azure.functions as func

    @app.function_name("key_rotation")
    @app.timer_trigger(schedule=SCHEDULE_SETTING, arg_name="timer", run_on_startup=False, use_monitor=True)
    def key_rotation(timer: func.TimerRequest) -> None:
        if timer.past_due:
            log.info("key rotation timer is past due; running now")
        run_scheduled()
