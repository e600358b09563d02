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

echo "== test suite, charging bridge: $impl (SPD_REQUIRE_COMPILED=${SPD_REQUIRE_COMPILED:-0}) =="
$PY -m pytest -q -p no:cacheprovider "$@"

echo "== test suite, charging bridge: pure-Python twin (SPD_PUREPYTHON=1) =="
SPD_PUREPYTHON=1 $PY -m pytest -q -p no:cacheprovider "$@"
