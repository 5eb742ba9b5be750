"""``python -m soulbox.gateway.limits_cli``: set, show or clear the limits of a tenant or an API key.

    set   (--tenant T | --key KEY_ID) [--requests-per-s R] [--concurrent-sandboxes N]
          [--invocations-per-day N] [--gb-seconds-per-month G]   unset fields take the settings' default
    show  (--tenant T | --key KEY_ID)                            the stored record (JSON), or nothing
    clear (--tenant T | --key KEY_ID)                            back to the settings' defaults

Connects with the usual settings (``SOULBOX_NATS__URLS``...); every gateway
follows a change within a moment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from nats.js.errors import KeyNotFoundError

from soulbox.core import names
from soulbox.core.bus import connect, ensure_topology
from soulbox.core.codec import decode
from soulbox.core.schemas import LimitsRecord, checked_name
from soulbox.core.settings import Settings

from .limits import key_token, put_limits


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m soulbox.gateway.limits_cli", description=__doc__)
    parser.add_argument("command", choices=("set", "show", "clear"))
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant")
    who.add_argument("--key", help="the API key's id (its visible prefix)")
    parser.add_argument("--requests-per-s", type=float)
    parser.add_argument("--concurrent-sandboxes", type=int)
    parser.add_argument("--invocations-per-day", type=int)
    parser.add_argument("--gb-seconds-per-month", type=float)
    return parser


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    nc = await connect(settings, name="soulbox-limits")
    try:
        kv = (await ensure_topology(nc.jetstream(), settings)).limits
        tenant = checked_name(args.tenant, what="tenant") if args.tenant else None
        key = names.tenant_limits_key(tenant) if tenant else names.api_key_limits_key(key_token(args.key))
        if args.command == "set":
            record = LimitsRecord(
                requests_per_s=args.requests_per_s,
                concurrent_sandboxes=args.concurrent_sandboxes,
                invocations_per_day=args.invocations_per_day,
                gb_seconds_per_month=args.gb_seconds_per_month,
            )
            await put_limits(kv, record, tenant=tenant, key_id=None if tenant else args.key)
        elif args.command == "clear":
            await kv.delete(key)
        else:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return 0
            if entry.value:
                print(json.dumps(decode(LimitsRecord, entry.value).model_dump(exclude={"v"})))
        return 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_run(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
