"""The JS/TS tier: Bun and Deno processes, each bound to one function (see README.md).

Layers, one module each: ``config`` (names, per-function env and
permissions) -> ``engines`` (how ``bun``/``deno`` start, with which flags)
-> ``source`` (parse without running: mode and syntax errors) ->
``modules`` (artifacts on disk) -> ``wire`` (the host protocol) and
``shim.mjs`` (its JS end) -> ``cgroup`` and ``memory`` (limits and peaks)
-> ``sandbox`` (bubblewrap around every process, from the Linux tier's
pieces) -> ``process`` (one process: spawn, output, deadline) -> ``pool`` (warm
processes by function) -> ``invoke`` (one invocation, classified) ->
``runtime`` (the tier's Runtime) -> ``factory`` (built from settings).
"""
