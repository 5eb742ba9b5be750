"""Sandboxes through the gateway: SoulBox's ``/v1/sandboxes`` API, the E2B-compatible API and the data plane."""
