"""The gateway speaks to devices only through the shared package: no gateway module imports ``device``."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"


def _device_imports(path: Path, root: Path = GATEWAY.parent) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno}: {name}"
                  for name in names if name == "device" or name.startswith("device.")]
    return found


def test_no_gateway_module_imports_the_device_package() -> None:
    modules = sorted(GATEWAY.rglob("*.py"))
    assert len(modules) > 20
    offenders = [hit for path in modules for hit in _device_imports(path)]
    assert offenders == [], "the gateway imports from device/ (move the shared part to spd_common/):\n" + "\n".join(
        offenders)


def test_the_check_sees_a_device_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import spd_common.wire\n\n"
                      "def f():\n    from device.wire import canonical\n    import device.sync as s\n")
    hits = _device_imports(module, tmp_path)
    assert [hit.split(": ")[1] for hit in hits] == ["device.wire", "device.sync"]
