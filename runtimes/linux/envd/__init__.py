"""SoulBox's in-sandbox daemon, wire-compatible with E2B's envd: stdlib only, run by the sandbox's python3."""
