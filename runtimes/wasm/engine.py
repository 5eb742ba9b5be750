"""One Wasmtime Engine per worker, with epoch interruption and its ticker."""

from __future__ import annotations

import hashlib
import threading
from importlib.metadata import version

import wasmtime

WASMTIME_VERSION = version("wasmtime")


class WasmEngine:
    """An Engine configured for untrusted guests plus the thread that advances its epoch.

    Deadlines are counted in ticks of ``tick_ms``; ``close()`` stops the ticker
    and may be called more than once.
    """

    def __init__(self, *, tick_ms: int = 10) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.cranelift_opt_level = "speed"
        config.wasm_exceptions = True  # MicroPython's build uses the exceptions proposal
        self.engine = wasmtime.Engine(config)
        self.tick_ms = tick_ms
        # What a precompiled artifact depends on besides the module bytes.
        self.fingerprint = hashlib.sha256(
            f"wasmtime={WASMTIME_VERSION};epoch=1;opt=speed;exceptions=1".encode()
        ).hexdigest()[:16]
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
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
