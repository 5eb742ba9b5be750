"""SoulBox's code-interpreter server: the E2B code-interpreter API on port 49999.

Runs inside a sandbox on the sandbox's own Python 3.11 and imports only the standard
library; every module here uses relative imports only, so the folder works both as
`soulbox.runtimes.linux.interpreter` and as a top-level `interpreter` package.
"""
