"""The Wasmtime tier: engine -> cached module -> InstancePre -> a Store per call."""
