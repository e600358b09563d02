#!/usr/bin/env bash
# The test job: lint and types on the core packages, then the whole suite twice,
# once with the compiled charging bridge and once with its pure-Python twin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

echo "== ruff =="
.venv/bin/ruff check device gateway hw_sim tests
echo "== mypy (strict, core packages) =="
.venv/bin/mypy

impl=$($PY -c "import gateway.bridge as b; print(b.IMPLEMENTATION)")
if [ "$impl" != "compiled" ] && command -v cc >/dev/null 2>&1; then
    echo "a C compiler is present but the compiled charging bridge did not build" >&2
    exit 1
fi

echo "== test suite, charging bridge: $impl =="
$PY -m pytest -q -p no:cacheprovider "$@"

echo "== test suite, charging bridge: pure-Python twin (SPD_PUREPYTHON=1) =="
SPD_PUREPYTHON=1 $PY -m pytest -q -p no:cacheprovider "$@"
