"""The ``soulbox`` command: ``up``, ``status``, ``down``, ``export-usage``, ``verify-audit``, ``tenants``, ``keys``.

Settings are built once per command, from the environment (``SOULBOX_*``,
``.env``) with the command-line options on top, and passed down from here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from soulbox.core.errors import SoulboxError
from soulbox.core.logging import configure_logging
from soulbox.core.settings import Settings

from .down import stop_stack
from .identity import keys_app, tenants_app
from .stack import default_nats_config, drop_busy_monitor, make_plan, resolve
from .status import collect, print_status
from .up import Stack, UpOptions

app = typer.Typer(
    name="soulbox",
    help="SoulBox: a self-hosted serverless control plane.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="state, logs and the NATS store (default: $SOULBOX_DATA_DIR or .soulbox)"),
]


def _settings(**overrides: Any) -> Settings:
    """``Settings()`` with the options that were given on top of the environment."""
    given = {key: value for key, value in overrides.items() if value is not None and value != {}}
    return Settings(**given)


@app.command()
def up(
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option("--port", help="gateway port (default 8470)")] = None,
    nats_port: Annotated[int | None, typer.Option(help="embedded NATS port (default 14222)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus metrics port (default 9470)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    external_nats: Annotated[
        list[str] | None,
        typer.Option("--external-nats", metavar="URL", help="use this NATS (repeatable) instead of the embedded one"),
    ] = None,
    foreground_logs: Annotated[bool, typer.Option(help="also print every component's log here")] = False,
    stop_timeout: Annotated[float, typer.Option(help="seconds a component gets to stop before SIGKILL")] = 10.0,
) -> None:
    """Run NATS, the gateway, the scheduler, workers and event consumers until Ctrl-C."""
    nats: dict[str, Any] = {}
    embedded: dict[str, Any] = {"port": nats_port}
    if external_nats:
        nats["urls"] = list(external_nats)
        embedded = {"enabled": False}
    settings = _settings(
        data_dir=data_dir,
        gateway={"port": port} if port else None,
        events={"metrics_port": metrics_port} if metrics_port else None,
        nats=nats,
        embedded_nats={k: v for k, v in embedded.items() if v is not None},
    )
    fmt = "console" if sys.stderr.isatty() else settings.log_format
    configure_logging(settings.log_level, fmt, component="supervisor")
    console = Console(soft_wrap=True)
    settings, note = drop_busy_monitor(resolve(settings))
    notes = [] if note is None else [note]
    nats_config = default_nats_config()
    if nats_config is None and settings.embedded_nats.enabled:
        notes.append("infra/nats.conf not found: the embedded NATS runs with its defaults (1 MB max payload)")
    for text in notes:
        console.print(Text.assemble(("note: ", "yellow"), text))
    try:
        plan = make_plan(settings, workers=workers, nats_config=nats_config)
    except SoulboxError as exc:
        console.print(Text.assemble(("error: ", "bold red"), exc.message))
        raise typer.Exit(1) from exc
    options = UpOptions(foreground_logs=foreground_logs, stop_timeout=stop_timeout)
    raise typer.Exit(asyncio.run(Stack(plan, options, console).run()))


@app.command()
def status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each probe")] = 3.0,
) -> None:
    """Show processes, gateway readiness, streams and workers; exit 1 unless the stack is up."""
    settings = _settings(data_dir=data_dir)
    configure_logging("error", "json", component="cli")  # NATS reconnect chatter is not status
    result = asyncio.run(collect(settings, timeout=timeout))
    print_status(result, Console(soft_wrap=True), as_json=as_json)
    raise typer.Exit(0 if result.up else 1)


@app.command()
def down(
    data_dir: DataDir = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the stack to stop")] = 60.0,
) -> None:
    """Stop the stack that `soulbox up` runs from the data directory."""
    settings = _settings(data_dir=data_dir)
    raise typer.Exit(stop_stack(resolve(settings).data_dir, timeout=timeout, console=Console(soft_wrap=True)))


@app.command("export-usage")
def export_usage(
    period: Annotated[str, typer.Option("--period", help="YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH (UTC)")],
) -> None:
    """Export a period's usage of every tenant to S3 (SOULBOX_S3__*) as CSV and JSON."""
    from soulbox.events.cli import main as events_main

    raise typer.Exit(events_main(["export-usage", "--period", period]))


@app.command("verify-audit")
def verify_audit(
    exported: Annotated[bool, typer.Option("--exported", help="also verify the segments exported to S3")] = False,
) -> None:
    """Verify the audit log's hash chain; exit 1 and name the first bad record if it is broken."""
    from soulbox.events.cli import main as events_main

    raise typer.Exit(events_main(["verify-audit", *(["--exported"] if exported else [])]))
