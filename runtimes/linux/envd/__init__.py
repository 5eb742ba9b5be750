"""SoulBox's in-sandbox daemon, wire-compatible with E2B's envd; stdlib only, run by the sandbox's python3.

    PYTHONPATH=/opt/soulbox SOULBOX_ENVD_ACCESS_TOKEN=<token> \\
        /usr/bin/python3 -m envd --socket /run/envd/envd.sock [--port 49983] \\
        [--env-file /path/env.json] [--user user] [--home /home/user]

It prints `envd ready` once it listens. Relative imports only, so the same folder runs as
`soulbox.runtimes.linux.envd` on the host.
"""
