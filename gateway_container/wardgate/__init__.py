"""wardgate: a Layer 7 access gateway for AI coding agents and CI pipelines."""
__version__ = "0.1.0"
