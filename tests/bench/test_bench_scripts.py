"""Benchmarks are not run by the suite, but they must keep importing: a renamed module breaks them silently."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[2] / "bench").glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert len(BENCH) >= 5


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.name)
def test_bench_script_imports(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # module level only: every script runs under `if __name__ == "__main__"`
    if "__main__" in path.read_text():  # a script, not a module the scripts share
        assert callable(getattr(module, "main", None))
