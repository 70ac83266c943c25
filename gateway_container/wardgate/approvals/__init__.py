"""Approval flow: held commands, approver decisions, notifications and webhooks (cloud-agnostic).

The stores and queues are handed in (``wardgate.core.ports``); nothing here imports a cloud SDK, so
the gateway's embedded default and the serverless approval functions run the same code.
"""

from wardgate.approvals.records import ApprovalRefused, ApprovalRequest, Outcome, Vote, command_hash
from wardgate.approvals.service import ApprovalService, Grant

__all__ = ["ApprovalRefused", "ApprovalRequest", "ApprovalService", "Grant", "Outcome", "Vote",
           "command_hash"]
