"""Cloud Functions (2nd gen) entry point of the evidence export: Cloud Scheduler → Pub/Sub → push.

The scheduler publishes ``{}`` to the schedule topic; its push subscription delivers it as a
``google.cloud.pubsub.topic.v1.messagePublished`` CloudEvent. The period defaults to the UTC day
before the message's publish time; a message ``{"period": "YYYY-MM-DD"}`` (or ``since``/``until``)
exports another. A failed run raises: Pub/Sub retries, then dead-letters the message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import datetime, timezone
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent

from functions.evidence_export.handler import run

log = logging.getLogger("wardgate.functions.evidence_export")


def _request(cloud_event: CloudEvent) -> dict[str, Any]:
    data: Any = cloud_event.get_data() or {}
    encoded = (data.get("message") or {}).get("data") if isinstance(data, dict) else None
    if not encoded:
        return {}
    try:
        request = json.loads(base64.b64decode(encoded, validate=True) or b"{}")
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"CloudEvent {cloud_event['id']}: the message is not base64 JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ValueError(f"CloudEvent {cloud_event['id']}: the message must be a JSON object")
    return request


def _published_at(cloud_event: CloudEvent) -> datetime:
    text = cloud_event.get("time")
    if not text:
        return datetime.now(timezone.utc)
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


@functions_framework.cloud_event
def export(cloud_event: CloudEvent) -> None:
    result = run(_request(cloud_event), _published_at(cloud_event))
    log.info("evidence export %s: %s", result.period.label, json.dumps(result.as_dict()))
