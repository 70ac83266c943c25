"""AWS Lambda entry points of the approval function (aws-lambda-powertools).

- ``notifier``: SQS event source with ``ReportBatchItemFailures``. Each record is handled on its own
  (``BatchProcessor``); a record whose notification failed is listed in ``batchItemFailures``, so SQS
  redelivers only that one and, after the queue's ``maxReceiveCount``, moves it to the dead-letter
  queue, while the others are deleted. Log lines carry the message id as correlation id.
- ``webhook``: Function URL (payload format 2.0, which API Gateway HTTP APIs share): every path goes to
  :class:`~wardgate.approvals.webhook.ApprovalWebhook`, which does its own routing and authentication.

Idempotency is the decision store's create-once record of a delivered message (see ``handler.py``),
not the powertools idempotency utility: it needs no extra table and no update/delete rights on the
create-once store.
"""

from __future__ import annotations

import base64
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from wardgate.adapters.aws import BODY_ENCODING_ATTRIBUTE
from wardgate.approvals.webhook import WebhookRequest
from wardgate.core.ports import QueueMessage

from functions.approval.handler import NotificationFailed, approval_function

logger = Logger(service="wardgate-approval")
# A batch whose records all failed is reported like any other (every record in batchItemFailures)
# rather than raised: SQS redelivers exactly those, and the invocation is not counted as an error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
resolver = LambdaFunctionUrlResolver()



def queue_message(record: SQSRecord) -> QueueMessage:
    """The :class:`QueueMessage` the SQS adapter would have received for this Lambda record."""
    attributes = {name: value.get("stringValue") or "" for name, value in
                  (record.raw_event.get("messageAttributes") or {}).items()}
    body = record.body.encode("utf-8")
    if attributes.pop(BODY_ENCODING_ATTRIBUTE, None) == "base64":
        body = base64.b64decode(body)
    count = int((record.raw_event.get("attributes") or {}).get("ApproximateReceiveCount") or 1)
    return QueueMessage(record.message_id, body, record.receipt_handle, count, attributes)


def _handle_record(record: SQSRecord) -> None:
    logger.append_keys(message_id=record.message_id)
    [result] = approval_function().notify([queue_message(record)], queue_url=record.event_source_arn or "")
    if not result.ok:
        # Raising marks this record failed: it is reported in batchItemFailures, the rest are acked.
        raise NotificationFailed(f"message {record.message_id}: {result.error}")
    logger.info("approval notification handled", extra={"outcome": result.outcome})


@logger.inject_lambda_context(correlation_id_path="Records[0].messageId", clear_state=True)
def notifier(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=_handle_record, processor=processor,
                                    context=context)


@resolver.route(".+", method=["GET", "POST"])
def _any_route() -> Response:
    event = resolver.current_event
    raw_body = event.get("body") or ""
    body = base64.b64decode(raw_body) if event.get("isBase64Encoded") else raw_body.encode("utf-8")
    call = WebhookRequest(event.http_method, event.path, dict(event.headers or {}), body,
                          dict(event.query_string_parameters or {}))
    answer = approval_function().webhook(call)
    logger.info("approval webhook answered", extra={"path": event.path, "status": answer.status})
    headers = dict(answer.headers)
    return Response(status_code=answer.status, content_type=headers.pop("Content-Type", None),
                    body=answer.body.decode("utf-8"), headers=headers)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.LAMBDA_FUNCTION_URL, clear_state=True)
def webhook(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolver.resolve(event, context)
