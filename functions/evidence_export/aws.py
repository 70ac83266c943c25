"""AWS Lambda entry point of the evidence export: an EventBridge scheduled event.

The period defaults to the UTC day before the event's ``time`` (the schedule's firing time, so a
retried or late run exports the day it was meant to). A manual invoke may name another with
``{"detail": {"period": "YYYY-MM-DD"}}`` or ``{"detail": {"since": …, "until": …}}``. A failed run
raises: Lambda retries the asynchronous invocation and then sends it to the function's dead-letter
queue, where it is seen.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.evidence_export.handler import run

logger = Logger(service="wardgate-evidence-export")


def _scheduled_time(event: dict[str, Any]) -> datetime:
    text = event.get("time")
    if not text:
        return datetime.now(timezone.utc)
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    result = run(detail, _scheduled_time(event))
    logger.info("evidence export finished", extra=result.as_dict())
    return result.as_dict()
