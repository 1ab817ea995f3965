"""Shared code of the payment platform's Lambda functions (the common layer)."""
