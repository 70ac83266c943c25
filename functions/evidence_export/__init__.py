"""The evidence-export function: a period of the audit archive as a signed evidence package."""
