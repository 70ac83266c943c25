"""Version state for the local fake Key Vault, which the rotation needs and the shared fake lacks.

``FakeKeyVaultWithVersionState`` is still a *fake* of Key Vault's REST API (not Microsoft's code),
driven through the real ``SecretClient``: it adds ``PATCH /secrets/{name}/{version}`` (what
``update_secret_properties`` sends) and answers a read of a disabled version as Key Vault does
(``403 Forbidden``, "Operation get is not allowed on a disabled secret."). Candidate for
``wardgate.devtools.localcloud.azure_fakes`` itself.
"""

from __future__ import annotations

from typing import Any

from wardgate.devtools.localcloud import azure_fakes
from wardgate.devtools.localcloud.azure_fakes import FakeKeyVault


class FakeKeyVaultWithVersionState(FakeKeyVault):
    """:class:`FakeKeyVault` whose secret versions can be disabled (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._disabled: set[tuple[str, str]] = set()

    def _secret_bundle(self, name: str, entry: Any) -> dict[str, Any]:
        bundle = super()._secret_bundle(name, entry)
        bundle["attributes"]["enabled"] = (name, entry.version) not in self._disabled
        return bundle

    def handle(self, method: str, parts: list[str], body: dict[str, Any]) -> dict[str, Any]:
        if parts[:1] == ["secrets"] and len(parts) in (2, 3) and method in ("GET", "PATCH"):
            with self._state.lock:
                entry = azure_fakes._find(self._state.secrets, parts[1], parts[2] if len(parts) == 3 else "",
                                          "Secret")
                if method == "PATCH":
                    enabled = (body.get("attributes") or {}).get("enabled")
                    if enabled is False:
                        self._disabled.add((parts[1], entry.version))
                    elif enabled is True:
                        self._disabled.discard((parts[1], entry.version))
                    bundle = self._secret_bundle(parts[1], entry)
                    del bundle["value"]  # an update answers with the properties only
                    return bundle
                if (parts[1], entry.version) in self._disabled:
                    raise azure_fakes._VaultError(403, "Forbidden", "Operation get is not allowed on a disabled "
                                                                    "secret.")
        return super().handle(method, parts, body)

    def _handler_class(self) -> type:
        base = super()._handler_class()

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_PATCH(self) -> None:
                self._serve("PATCH")

        return Handler
