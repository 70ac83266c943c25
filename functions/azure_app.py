"""Azure Functions (Python v2 programming model): one ``FunctionApp`` named ``app`` with every trigger.

``functions/build.py`` packages this file with every unit's ``handler.py`` (and nothing else from
``functions/``), so each unit's Azure triggers are registered here, in their own block, as thin
wrappers around that handler. App settings are in ``infra/azure/wardgate_azure.py``.

- approval notifier: queue trigger on ``%WARDGATE_APPROVALS_QUEUE_NAME%`` (identity-based connection
  ``WardgateQueue``). The runtime base64-decodes the message; the body is unwrapped with
  :func:`wardgate.adapters.azure.decode_queue_payload`. An undelivered notification raises: the
  runtime retries it and, after ``maxDequeueCount``, moves it to ``<queue>-poison``.
- approval webhook: HTTP trigger on ``/api/{*path}`` (anonymous at the platform: every call is
  authenticated by the approvals webhook itself: Slack/HMAC signatures, one-time links, OIDC tokens).
- evidence export: timer ``%WARDGATE_EVIDENCE_SCHEDULE%``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import azure.functions as func

from wardgate.adapters.azure import decode_queue_payload
from wardgate.approvals.webhook import WebhookRequest
from wardgate.core.ports import QueueMessage

from functions.approval.handler import NotificationFailed, approval_function
from functions.evidence_export.handler import run as export_evidence_for

log = logging.getLogger("wardgate.functions")

app = func.FunctionApp()


# --- approval (functions/approval/handler.py) -----------------------------------------------------

def queue_message(message: func.QueueMessage) -> QueueMessage:
    """The :class:`QueueMessage` the Storage Queue adapter would have received."""
    body, attributes = decode_queue_payload(message.get_body())
    return QueueMessage(message.id or "", body, message.pop_receipt or "", int(message.dequeue_count or 1),
                        attributes)


@app.function_name("approval_notifier")
@app.queue_trigger(arg_name="message", queue_name="%WARDGATE_APPROVALS_QUEUE_NAME%", connection="WardgateQueue")
def approval_notifier(message: func.QueueMessage) -> None:
    request = queue_message(message)
    [result] = approval_function().notify([request], queue_url="%WARDGATE_APPROVALS_QUEUE_NAME%")
    if not result.ok:
        raise NotificationFailed(f"message {request.id} (delivery {request.receive_count}): {result.error}")
    log.info("approval notification %s: %s", request.id, result.outcome)


@app.function_name("approval_webhook")
@app.route(route="{*path}", trigger_arg_name="request", methods=[func.HttpMethod.GET, func.HttpMethod.POST],
           auth_level=func.AuthLevel.ANONYMOUS)
def approval_webhook(request: func.HttpRequest) -> func.HttpResponse:
    path = "/" + (request.route_params.get("path") or "").lstrip("/")
    call = WebhookRequest(request.method, path, dict(request.headers), request.get_body(), dict(request.params))
    answer = approval_function().webhook(call)
    log.info("approval webhook %s %s: %d", request.method, path, answer.status)
    headers = dict(answer.headers)
    return func.HttpResponse(body=answer.body, status_code=answer.status, headers=headers,
                             mimetype=headers.get("Content-Type", "application/json").split(";")[0])


# --- evidence export (functions/evidence_export/handler.py) ----------------------------------------

@app.function_name("evidence_export")
@app.timer_trigger(arg_name="timer", schedule="%WARDGATE_EVIDENCE_SCHEDULE%", use_monitor=True)
def evidence_export(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("evidence export is running late (past due): exporting the day before now")
    result = export_evidence_for(None, datetime.now(timezone.utc))
    log.info("evidence export %s: %s (%s)", result.period.label, result.status, result.verification)


# --- key rotation (functions/key_rotation/handler.py) ----------------------------------------------
# Registered here by its owner: two timer/rotation triggers wrapping functions.key_rotation.handler.
from functions.key_rotation import azure as _rotation  # noqa: E402  (registers on the shared app)

_rotation.register(app)
