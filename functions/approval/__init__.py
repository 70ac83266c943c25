"""The approval function: queue-triggered notifier and the approvers' webhook (see handler.py)."""
