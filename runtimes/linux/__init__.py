"""The Linux namespace sandbox tier: full-Linux functions in bubblewrap sandboxes.

Layers, each its own module: :mod:`.config` (settings) -> :mod:`.seccomp`
(the BPF filter, compiled once) -> :mod:`.cgroup` (v1/v2 per-sandbox cgroups)
-> :mod:`.rootfs` (the minimal read-only root) -> :mod:`.sandbox` (the
launcher: namespaces + cgroup + seccomp, one command, deadline) ->
:mod:`.runtime` (the tier's Runtime: python, shell and node functions).
"""
