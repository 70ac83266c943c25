"""Cloud Functions (2nd gen) entry points of the approval function (functions-framework).

- ``notifier``: a CloudEvent from the approvals topic's **push** subscription (functions-framework
  turns the push request into a ``google.cloud.pubsub.topic.v1.messagePublished`` CloudEvent whose
  ``data.message.data`` is the base64 body). An undelivered notification raises, the framework answers
  500, and Pub/Sub redelivers it until the subscription's dead-letter policy moves it to the
  dead-letter topic.
- ``webhook``: plain HTTP (Flask request): every path goes to the approvals webhook.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent

from wardgate.approvals.webhook import WebhookRequest
from wardgate.core.ports import QueueMessage

from functions.approval.handler import NotificationFailed, approval_function

log = logging.getLogger("wardgate.functions.approval")


class BadEvent(ValueError):
    """The CloudEvent is not a Pub/Sub message: redelivering it cannot help, but it must be seen."""


def queue_message(cloud_event: CloudEvent) -> QueueMessage:
    """The :class:`QueueMessage` the Pub/Sub adapter would have pulled for this pushed message."""
    data: Any = cloud_event.get_data() or {}
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict) or "data" not in message:
        raise BadEvent(f"CloudEvent {cloud_event['id']} ({cloud_event['type']}) carries no Pub/Sub message")
    try:
        body = base64.b64decode(message["data"], validate=True)
    except (binascii.Error, TypeError):
        raise BadEvent(f"CloudEvent {cloud_event['id']}: message.data is not base64") from None
    message_id = str(message.get("messageId") or message.get("message_id") or cloud_event["id"])
    # Push requests carry deliveryAttempt beside the message when a dead-letter policy is set.
    attempt = int(data.get("deliveryAttempt") or message.get("deliveryAttempt") or 1)
    return QueueMessage(message_id, body, "", attempt, dict(message.get("attributes") or {}))


@functions_framework.cloud_event
def notifier(cloud_event: CloudEvent) -> None:
    message = queue_message(cloud_event)
    [result] = approval_function().notify([message], queue_url=str(cloud_event["source"]))
    if not result.ok:
        # Not acknowledged: Pub/Sub retries with backoff, then dead-letters it.
        raise NotificationFailed(f"message {message.id}: {result.error}")
    log.info("approval notification %s: %s", message.id, result.outcome)


@functions_framework.http
def webhook(request: Any) -> tuple[bytes, int, dict[str, str]]:
    call = WebhookRequest(request.method, request.path, dict(request.headers), request.get_data(),
                          request.args.to_dict())
    answer = approval_function().webhook(call)
    log.info("approval webhook %s %s: %d", request.method, request.path, answer.status)
    return answer.body, answer.status, dict(answer.headers)
