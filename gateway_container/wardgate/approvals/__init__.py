"""Approval flow: held commands, approver decisions, notifications and webhooks (cloud-agnostic)."""
