"""Bad URLs are refused naming the bad part; a dead endpoint is a StoreUnavailable within seconds."""

from __future__ import annotations

import time

import pytest

from wardgate.adapters import open_decision_store, open_object_store, open_queue, open_secret_source, open_signer
from wardgate.core.credentials import CredentialError
from wardgate.core.ports import StoreUnavailable
from wardgate.devtools.localcloud.azure import ACCOUNT_KEY
from wardgate.devtools.pgserver import free_port


@pytest.mark.parametrize("opener, url, message", [
    (open_queue, "azqueue://devstoreaccount1", "azqueue://: missing queue name"),
    (open_queue, "azqueue:///approvals", "azqueue://: missing storage account"),
    (open_queue, "azqueue://devstoreaccount1/Approvals_Q", "invalid queue name 'Approvals_Q'"),
    (open_queue, "azqueue://devstoreaccount1/q1/extra", "expected azqueue://ACCOUNT/QUEUE"),
    (open_queue, "azqueue://devstoreaccount1/approvals?max_receives=0", "max_receives=0 must be between"),
    (open_queue, "azqueue://devstoreaccount1/approvals?visibility=soon", "visibility='soon' is not an integer"),
    (open_queue, "azqueue://devstoreaccount1/approvals?dlq=x", "unknown parameter(s) dlq"),
    (open_queue, "azqueue://devstoreaccount1/" + "q" * 60, "invalid queue name"),
    (open_decision_store, "aztable://devstoreaccount1", "aztable://: missing table name"),
    (open_decision_store, "aztable://devstoreaccount1/1decisions", "invalid table name '1decisions'"),
    (open_decision_store, "aztable://Bad_Account/decisions", "invalid storage account 'Bad_Account'"),
    (open_object_store, "azblob://devstoreaccount1", "azblob://: missing container name"),
    (open_object_store, "azblob://devstoreaccount1/Audit", "invalid container name 'Audit'"),
    (open_object_store, "azblob://devstoreaccount1/audit?worm=no", "worm='no' must be 'on' or 'off'"),
    (open_signer, "azurekv-key://myvault", "azurekv-key://: missing key name"),
    (open_signer, "azurekv-key:///key", "azurekv-key://: missing vault name"),
    (open_signer, "azurekv-key://my_vault/key", "invalid vault name 'my_vault'"),
    (open_signer, "azurekv-key://myvault/key/v1/x", "too many path segments"),
    (open_signer, "azurekv-key://myvault/key/not-a-version", "invalid key version"),
])
def test_bad_urls_name_the_bad_part(opener, url, message):
    with pytest.raises(ValueError) as raised:
        opener(url)
    assert message in str(raised.value)


def test_bad_secret_url_names_the_bad_part():
    with pytest.raises(ValueError, match="azure-kv://: missing secret name"):
        open_secret_source("azure-kv://myvault", "u")
    with pytest.raises(ValueError, match="invalid secret name 'db.password'"):
        open_secret_source("azure-kv://myvault/db.password", "u")


def _dead_storage(monkeypatch, account: str = "devstoreaccount1") -> None:
    port = free_port()  # nothing listens there
    endpoints = ";".join(f"{service}Endpoint=http://127.0.0.1:{port}/{account}" for service in ("Blob", "Queue", "Table"))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={ACCOUNT_KEY};{endpoints};")


@pytest.mark.parametrize("action, url", [
    (lambda: open_queue("azqueue://devstoreaccount1/approvals").send(b"x"), "azqueue://devstoreaccount1/approvals"),
    (lambda: open_queue("azqueue://devstoreaccount1/approvals").receive(), "azqueue://devstoreaccount1/approvals"),
    (lambda: open_decision_store("aztable://devstoreaccount1/decisions").create("a/b", {}),
     "aztable://devstoreaccount1/decisions"),
    (lambda: open_decision_store("aztable://devstoreaccount1/decisions").list("a/"),
     "aztable://devstoreaccount1/decisions"),
    (lambda: open_object_store("azblob://devstoreaccount1/audit"), "azblob://devstoreaccount1/audit"),
    (lambda: open_object_store("azblob://devstoreaccount1/audit?worm=off").put("k", b"x"),
     "azblob://devstoreaccount1/audit?worm=off"),
])
def test_dead_storage_endpoint_is_unavailable_within_seconds(monkeypatch, action, url):
    _dead_storage(monkeypatch)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        action()
    assert url in str(raised.value)
    assert time.monotonic() - started < 10


def test_dead_key_vault_is_unavailable_within_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE", f"https://127.0.0.1:{free_port()}")
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_TOKEN", "t")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="azurekv-key://myvault/audit-key"):
        open_signer("azurekv-key://myvault/audit-key")
    with pytest.raises(CredentialError, match="azure-kv://myvault/db"):
        open_secret_source("azure-kv://myvault/db", "u").fetch()
    assert time.monotonic() - started < 15


def test_connection_string_for_another_account_is_refused(monkeypatch):
    _dead_storage(monkeypatch, account="otheraccount")
    with pytest.raises(ValueError, match="AZURE_STORAGE_CONNECTION_STRING is for account 'otheraccount'"):
        open_queue("azqueue://devstoreaccount1/approvals")


def test_vault_url_template_with_a_path_is_refused(monkeypatch):
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE", "https://127.0.0.1:8443/{vault}")
    with pytest.raises(ValueError, match="must be https://HOST"):
        open_secret_source("azure-kv://myvault/db", "u")
