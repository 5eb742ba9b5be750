"""The audit subjects, laid out per tenant so one tenant's log is one filter.

    sb.audit.<tenant>.event   lifecycle events of the tenant's invocations
    sb.audit.<tenant>.api     API calls made by (or on behalf of) the tenant
    sb.audit._.api            API calls with no (valid) tenant, e.g. refused ones

``core.names.audit_subject(kind)`` predates the per-tenant layout; these
functions are what the audit recorder and readers use.
"""

from __future__ import annotations

from typing import Final

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import NAME_RE

NO_TENANT: Final = "_"
"""The subject token used for records that carry no valid tenant name."""


def tenant_token(tenant: str | None) -> str:
    """``tenant`` if it is a valid name (so it cannot inject ``.``/``*``/``>``), else ``_``."""
    if tenant is not None and NAME_RE.match(tenant):
        return tenant
    return NO_TENANT


def audit_event_subject(tenant: str) -> str:
    return f"sb.audit.{tenant_token(tenant)}.event"


def audit_api_subject(tenant: str | None) -> str:
    return f"sb.audit.{tenant_token(tenant)}.api"


def audit_tenant_filter(tenant: str) -> str:
    """Every audit subject of ``tenant``; ``_`` selects the records without a tenant."""
    if tenant == NO_TENANT:
        return f"sb.audit.{NO_TENANT}.>"
    return f"sb.audit.{checked_name(tenant, what='tenant')}.>"


def checked_name(value: str, *, what: str) -> str:
    """``value`` unchanged, or ``InvalidRequest`` when it is not a valid name (no wildcards, no dots)."""
    if NAME_RE.match(value):
        return value
    raise InvalidRequest(f"invalid {what} name {value!r}")
