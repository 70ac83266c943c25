"""The key-rotation function: alternating-users rotation of backend credentials (see handler.py)."""
