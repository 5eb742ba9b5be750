"""Wasmtime Engines for a worker, with epoch interruption and its ticker.

A worker has a plain engine and, once a function with a fuel budget runs, a
second one with fuel metering: metering is compiled into the code (a counter
update per basic block), so the functions without a budget do not pay for it.
"""

from __future__ import annotations

import hashlib
import threading
from importlib.metadata import version

import wasmtime

WASMTIME_VERSION = version("wasmtime")


class WasmEngine:
    """An Engine configured for untrusted guests plus the thread that advances its epoch.

    Deadlines are counted in ticks of ``tick_ms``; ``close()`` stops the ticker
    and may be called more than once. With ``fuel``, every Store must be given
    its budget (``Store.set_fuel``) before it runs anything.
    """

    def __init__(self, *, tick_ms: int = 10, fuel: bool = False) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = fuel
        self.fuel = fuel
        config.cranelift_opt_level = "speed"
        config.wasm_exceptions = True  # MicroPython's build uses the exceptions proposal
        self.engine = wasmtime.Engine(config)
        self.tick_ms = tick_ms
        # What a precompiled artifact depends on besides the module bytes: code compiled
        # with fuel metering differs, so the two engines never share a cache entry (the
        # plain engine's string is unchanged, so caches from before fuel stay valid).
        self.fingerprint = hashlib.sha256(
            f"wasmtime={WASMTIME_VERSION};epoch=1;opt=speed;exceptions=1{';fuel=1' if fuel else ''}".encode()
        ).hexdigest()[:16]
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name=f"wasm-epoch{'-fuel' if fuel else ''}", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        interval = self.tick_ms / 1000
        while not self._stop.wait(interval):
            self.engine.increment_epoch()

    def deadline_ticks(self, timeout_ms: int) -> int:
        # +1: the current tick may be almost over when the deadline is set.
        return max(1, -(-timeout_ms // self.tick_ms)) + 1

    def close(self) -> None:
        self._stop.set()
        if self._ticker.is_alive() and threading.current_thread() is not self._ticker:
            self._ticker.join(timeout=1)
