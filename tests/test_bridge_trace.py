"""The trace that picks the test modules the twin runs again: a process reaching the bridge notes its test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(tmp_path: Path, code: str, **env: str) -> list[str]:
    trace = tmp_path / "trace"
    trace.touch()
    full = {**os.environ, "SPD_BRIDGE_TRACE": str(trace), **env}
    subprocess.run([sys.executable, "-c", code], env=full, check=True, timeout=60)
    return trace.read_text().splitlines()


def test_a_process_that_reaches_the_bridge_notes_its_test_module_once(tmp_path: Path) -> None:
    code = ("import gateway.bridge as b\n"
            "b.new_consumed_set(); b.new_consumed_set()\n")
    assert _run(tmp_path, code, PYTEST_CURRENT_TEST="tests/test_x.py::test_y (call)") == ["tests/test_x.py"]


def test_importing_the_bridge_is_not_reaching_it(tmp_path: Path) -> None:
    assert _run(tmp_path, "import gateway.bridge", PYTEST_CURRENT_TEST="tests/test_x.py::test_y (call)") == []
