"""Long-lived sandboxes on a worker: the host side of the E2B-compatible sandbox API."""
