"""Failures of the Linux tier itself (never of the guest, whose failures are results).

They reuse the core hierarchy, so the worker and gateway classify them as usual:

    SoulboxError
     ├── Unavailable
     │    └── SandboxUnavailable   the host lacks what a sandbox needs (bwrap, user
     │                             namespaces, a cgroup controller, libseccomp)
     ├── SandboxError              a sandbox could not be set up or torn down
     │    └── SandboxSetupFailed   bubblewrap gave up before the command ran
     └── InvalidRequest
          └── UnsupportedRuntime   a function whose runtime this tier does not run
"""

from __future__ import annotations

from soulbox.core.errors import InvalidRequest, SoulboxError, Unavailable


class SandboxUnavailable(Unavailable):
    code = "sandbox_unavailable"


class SandboxError(SoulboxError):
    code = "sandbox_error"


class SandboxSetupFailed(SandboxError):
    code = "sandbox_setup_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(f"the sandbox could not start: {detail}")
        self.detail = detail


class UnsupportedRuntime(InvalidRequest):
    code = "unsupported_runtime"

    def __init__(self, runtime: str) -> None:
        super().__init__(f"the linux tier does not run {runtime!r} functions")
        self.runtime = runtime
