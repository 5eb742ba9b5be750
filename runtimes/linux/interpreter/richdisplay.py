"""MIME bundles for Python values, the way IPython's display formatter builds them.

Runs inside the Python kernel and imports nothing third-party: an object gets rich
representations only through its own `_repr_*_` methods (pandas, IPython-style classes),
and matplotlib figures are rendered through the figure's own `savefig`.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable
from typing import Any

Bundle = dict[str, Any]
Publisher = Callable[[Bundle, bool], None]

# (method, MIME type, binary: base64-encode bytes)
_REPR_METHODS = (
    ("_repr_html_", "text/html", False),
    ("_repr_markdown_", "text/markdown", False),
    ("_repr_svg_", "image/svg+xml", False),
    ("_repr_png_", "image/png", True),
    ("_repr_jpeg_", "image/jpeg", True),
    ("_repr_pdf_", "application/pdf", True),
    ("_repr_latex_", "text/latex", False),
    ("_repr_json_", "application/json", False),
    ("_repr_javascript_", "application/javascript", False),
)

_publisher: list[Publisher] = []


def set_publisher(publish: Publisher) -> None:
    """Route display output to the kernel (called once by the kernel at start)."""
    _publisher[:] = [publish]


def _encode(value: Any, binary: bool) -> Any:
    if binary and isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def is_figure(obj: object) -> bool:
    """A matplotlib Figure, recognised without importing matplotlib."""
    module = type(obj).__module__ or ""
    return module.startswith("matplotlib.") and hasattr(obj, "savefig") and hasattr(obj, "canvas")


def figure_bundle(fig: Any) -> Bundle:
    """A figure as image/png (what IPython's inline backend sends) plus its text."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {"text/plain": repr(fig), "image/png": base64.b64encode(buf.getvalue()).decode("ascii")}


def mime_bundle(obj: object) -> Bundle:
    """Every representation `obj` offers, always with text/plain."""
    if is_figure(obj):
        return figure_bundle(obj)
    bundle: Bundle = {}
    if not isinstance(obj, type):
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                got = method(include=None, exclude=None)
            except Exception:
                got = None
            if isinstance(got, tuple):
                got = got[0]
            if isinstance(got, dict):
                for mime, value in got.items():
                    bundle[str(mime)] = _encode(value, mime.startswith(("image/png", "image/jpeg", "application/pdf")))
        for name, mime, binary in _REPR_METHODS:
            if mime in bundle:
                continue
            method = getattr(obj, name, None)
            if not callable(method):
                continue
            try:
                value = method()
            except Exception:
                continue
            if isinstance(value, tuple):  # (data, metadata), as IPython allows
                value = value[0]
            if value is not None:
                bundle[mime] = _encode(value, binary)
    if "text/plain" not in bundle:
        try:
            bundle["text/plain"] = repr(obj)
        except Exception as exc:
            bundle["text/plain"] = f"<repr of {type(obj).__name__} failed: {exc!r}>"
    return bundle


def display(*objs: object, raw: bool = False) -> None:
    """Show objects as (non-main) results, like IPython's `display()`."""
    for obj in objs:
        if raw and isinstance(obj, dict):
            bundle: Bundle = dict(obj)
        else:
            bundle = mime_bundle(obj)
            if is_figure(obj):
                _close_figure(obj)
        for publish in _publisher:
            publish(bundle, False)


def _close_figure(fig: object) -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)


def flush_figures() -> None:
    """Publish every open pyplot figure as image/png, then close them all."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        numbers = pyplot.get_fignums()
        for num in numbers:
            fig = pyplot.figure(num)
            bundle = figure_bundle(fig)
            for publish in _publisher:
                publish(bundle, False)
    finally:
        pyplot.close("all")
