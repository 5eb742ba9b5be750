"""``python -m soulbox.cli``: the same as the ``soulbox`` command."""

from .main import app

app(prog_name="soulbox")
