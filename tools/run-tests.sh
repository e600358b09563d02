#!/usr/bin/env bash
# The test job: lint and types on the core packages, then the whole suite twice,
# once with the compiled charging bridge and once with its pure-Python twin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

# with a C compiler present the compiled charging bridge must be there: importing
# gateway.bridge fails otherwise (SPD_REQUIRE_COMPILED, docs/deploy.md), in both passes
if [ -z "${SPD_REQUIRE_COMPILED:-}" ] && command -v cc >/dev/null 2>&1; then
    export SPD_REQUIRE_COMPILED=1
fi

echo "== ruff =="
.venv/bin/ruff check spd_common device gateway hw_sim tests
echo "== mypy (strict, core packages) =="
.venv/bin/mypy

impl=$($PY -c "import gateway.bridge as b; print(b.IMPLEMENTATION)")

# The first pass runs every test and notes each test module whose run reached the bridge's
# implementation, in the test process or in a process it started (SPD_BRIDGE_TRACE, gateway/bridge).
# The second pass runs those modules again with the pure-Python twin; the rest need not run twice.
trace=$(mktemp)
trap 'rm -f "$trace"' EXIT

echo "== test suite, charging bridge: $impl (SPD_REQUIRE_COMPILED=${SPD_REQUIRE_COMPILED:-0}) =="
SPD_BRIDGE_TRACE=$trace $PY -m pytest -q -p no:cacheprovider --durations=15 "$@"

mapfile -t reached < <(sort -u "$trace")
if [ ${#reached[@]} -eq 0 ]; then
    if [ $# -eq 0 ]; then
        echo "no test reached the charging bridge: the trace is broken (gateway/bridge/__init__.py)" >&2
        exit 1
    fi
    echo "== no selected test reaches the charging bridge: no second pass =="
    exit 0
fi
echo "== test suite, charging bridge: pure-Python twin (SPD_PUREPYTHON=1), ${#reached[@]} modules that reach it =="
SPD_PUREPYTHON=1 $PY -m pytest -q -p no:cacheprovider --durations=15 "${reached[@]}"
