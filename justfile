# SoulBox tasks. Run them with ./justw, which first creates .venv from uv.lock.
#   ./justw up            the whole stack, until Ctrl-C
#   ./justw test          the test suite (what CI runs)

set positional-arguments := true
set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv" / "bin"

# list the recipes
default:
    @{{just_executable()}} --justfile {{justfile()}} --list --unsorted

# run NATS, gateway, scheduler, workers and event consumers (see: ./justw up --help)
up *ARGS:
    {{bin}}/soulbox up "$@"

# show processes, streams and workers of the running stack
status *ARGS:
    {{bin}}/soulbox status "$@"

# stop the stack that `up` runs in another terminal
down *ARGS:
    {{bin}}/soulbox down "$@"

# run the tests; any non-zero pytest exit fails, including 5 (no tests collected)
test *ARGS:
    {{bin}}/pytest "$@"

# ruff and mypy --strict (mypy sees the folders as the installed `soulbox.*` packages)
lint:
    {{bin}}/ruff check .
    tree="$(mktemp -d)"; trap 'rm -rf "$tree"' EXIT; mkdir "$tree/soulbox"; \
    for d in core gateway scheduler runtimes events cli triggers; do ln -s "$PWD/$d" "$tree/soulbox/$d"; done; \
    cd "$tree" && MYPYPATH="$tree" {{bin}}/mypy --config-file "{{justfile_directory()}}/pyproject.toml" \
        -p soulbox.core -p soulbox.gateway -p soulbox.scheduler -p soulbox.runtimes -p soulbox.events -p soulbox.cli -p soulbox.triggers

# format the code and apply ruff's safe fixes
fmt:
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# end-to-end invoke latency and throughput (see bench/README.md)
bench *ARGS:
    {{bin}}/python bench/invoke.py "$@"
