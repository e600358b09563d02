"""Packaging: the device agent installs alone; gateway and simulators name their extra; the compiled-bridge switch.

The wheel test builds the distribution from a copy of the sources, makes a venv without system
site-packages, gives it only the base dependencies and runs ``spd-device --help`` there. It works
offline: the base dependencies are copied, file by file from their installed records, from the
test's own environment (pip has no way to install from an installed distribution, and a wheel
cache holds only wheels pip built itself); ``pip check`` then proves the copies satisfy what the
wheel declares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from gateway import launcher as gateway_launcher
from hw_sim import launcher as sim_launcher
from spd_common import extras

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("spd_common", "device", "gateway", "hw_sim", "pyproject.toml", "setup.py", "README.md")
NOT_IN_DEVICE_VENV = ("hl7", "openpyxl", "numpy", "cv2", "zxingcpp", "mfusepy", "evdev", "hypothesis", "pytest")

REQUIRES = [
    "paho-mqtt<3,>=2.1",
    "cryptography>=42",
    'hl7>=0.4.5; extra == "gateway"',
    'openpyxl>=3.1; extra == "gateway"',
    'spd-edge[gateway]; extra == "sim"',
    'hl7>=0.4.5; extra == "sim"',
    'numpy>=1.26; extra == "camera"',
    'spd-edge[camera,sim]; extra == "test"',
    'pytest>=8; extra == "test"',
]


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPD_")}
    env.update(overrides)
    return env


# --- which packages an extra needs, and the message when they are missing ---------------------------


@pytest.fixture
def fake_metadata(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    installed = {"paho-mqtt", "cryptography"}

    def requires(name: str) -> list[str]:
        assert name == "spd-edge"
        return REQUIRES

    def distribution(name: str) -> object:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(extras.metadata, "requires", requires)
    monkeypatch.setattr(extras.metadata, "distribution", distribution)
    yield installed


def test_an_extra_follows_references_to_other_extras(fake_metadata: set[str]) -> None:
    assert extras.missing_requirements("gateway") == ["hl7", "openpyxl"]
    assert extras.missing_requirements("sim") == ["hl7", "openpyxl"]
    assert extras.missing_requirements("test") == ["numpy", "hl7", "openpyxl", "pytest"]
    fake_metadata.update({"hl7", "openpyxl"})
    assert extras.missing_requirements("sim") == []


def test_spd_gateway_without_its_extra_names_the_extra(fake_metadata: set[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        gateway_launcher.main(["--help"])
    message = str(stop.value.code)
    assert message.startswith("spd-gateway: ")
    assert "spd-edge[gateway]" in message and "missing: hl7, openpyxl" in message
    assert capsys.readouterr().out == ""  # stopped before the command line ran


def test_spd_sim_without_its_extras_names_them(fake_metadata: set[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        sim_launcher.main(["his", "--help"])
    assert "spd-edge[sim]" in str(stop.value.code)
    fake_metadata.update({"hl7", "openpyxl"})
    with pytest.raises(SystemExit) as stop:
        sim_launcher.main(["camera-bench"])
    assert "spd-edge[sim,camera]" in str(stop.value.code) and "missing: numpy" in str(stop.value.code)


def test_spd_sim_subcommands_ask_for_the_extras_they_use() -> None:
    assert sim_launcher.extras_for(["demo"]) == ("sim",)
    assert sim_launcher.extras_for(["camera-bench"]) == ("sim", "camera")
    assert sim_launcher.extras_for(["fuzz", "udi"]) == ("sim", "fuzz")
    assert sim_launcher.extras_for(["fuzz", "udi", "--engine", "random"]) == ("sim",)
    assert sim_launcher.extras_for(["fuzz", "all", "--engine=random"]) == ("sim", "camera")
    assert sim_launcher.extras_for(["fuzz", "camera_frame"]) == ("sim", "fuzz", "camera")


def test_without_installed_metadata_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    def requires(name: str) -> list[str]:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(extras.metadata, "requires", requires)
    assert extras.missing_requirements("gateway") == []


def test_this_environment_has_the_gateway_and_sim_extras() -> None:
    assert extras.missing_requirements("gateway", "sim") == []


# --- SPD_REQUIRE_COMPILED: a missing compiled bridge is an error, at import and at build ----------------

HIDE_EXTENSION = ("import sys; sys.modules['gateway.bridge._cbridge'] = None; "
                  "import gateway.bridge as b; print(b.IMPLEMENTATION)")


def test_missing_compiled_bridge_falls_back_to_the_twin_unless_required() -> None:
    run = subprocess.run([sys.executable, "-c", HIDE_EXTENSION], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "pure"
    for env in (_env(SPD_REQUIRE_COMPILED="1"), _env(SPD_REQUIRE_COMPILED="1", SPD_PUREPYTHON="1")):
        run = subprocess.run([sys.executable, "-c", HIDE_EXTENSION], cwd=ROOT, env=env, capture_output=True, text=True)
        assert run.returncode == 1
        assert "CompiledBridgeMissing: SPD_REQUIRE_COMPILED=1 but the compiled charging bridge" in run.stderr


@pytest.fixture
def bridge_source(tmp_path: Path) -> Path:
    """setup.py and the bridge's Cython source (and its generated C, to skip cythonizing) in a scratch dir."""
    (tmp_path / "gateway" / "bridge").mkdir(parents=True)
    shutil.copy2(ROOT / "setup.py", tmp_path)
    for path in (ROOT / "gateway" / "bridge").glob("_cbridge.*"):
        if path.suffix in (".pyx", ".pxd", ".c"):
            shutil.copy2(path, tmp_path / "gateway" / "bridge")
    return tmp_path


def _build_ext(where: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=where,
                          env=_env(**env), capture_output=True, text=True, timeout=120)


def test_failed_compile_is_a_warning_by_default_and_an_error_when_required(bridge_source: Path) -> None:
    lenient = _build_ext(bridge_source, CC="false")  # a compiler that always fails
    assert lenient.returncode == 0, lenient.stderr
    assert "the pure-Python twin will be used" in lenient.stdout + lenient.stderr
    strict = _build_ext(bridge_source, CC="false", SPD_REQUIRE_COMPILED="1")
    assert strict.returncode != 0
    assert "CompiledBridgeRequired: SPD_REQUIRE_COMPILED=1: _cbridge not built" in strict.stderr


def test_required_compiled_bridge_contradicts_no_extensions(bridge_source: Path) -> None:
    run = _build_ext(bridge_source, SPD_NO_EXTENSIONS="1", SPD_REQUIRE_COMPILED="1")
    assert run.returncode != 0
    assert "SPD_REQUIRE_COMPILED=1 and SPD_NO_EXTENSIONS=1 contradict each other" in run.stderr


# --- the device agent from a wheel, in a venv with only the base dependencies -----------------------


def _base_distributions() -> list[metadata.Distribution]:
    """spd-edge's base requirements and theirs, as installed here (no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in metadata.requires("spd-edge") or []]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        dist = metadata.distribution(req.name)
        key = dist.metadata["Name"].lower()
        if key not in found:
            found[key] = dist
            todo += [Requirement(r) for r in dist.requires or []]
    return list(found.values())


def _copy_installed(dist: metadata.Distribution, site_packages: Path) -> None:
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue  # scripts outside site-packages; byte code is rebuilt
        target = site_packages / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file.locate(), target)


@pytest.mark.slow
def test_device_wheel_runs_with_only_the_base_dependencies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # a cabinet needs no charging bridge: the device wheel is pure Python
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(src)], env=_env(SPD_NO_EXTENSIONS="1"), check=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("spd_edge-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    base = _base_distributions()
    assert {d.metadata["Name"].lower() for d in base} >= {"paho-mqtt", "pyserial", "cryptography"}
    for dist in base:
        _copy_installed(dist, site_packages)
    target = [*pip, "--python", str(python)]
    subprocess.run([*target, "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=120)
    check = subprocess.run([*target, "check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr  # the copies satisfy every base requirement

    env = _env(PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}")
    outside = tmp_path / "elsewhere"  # not the source tree: imports must come from the venv
    outside.mkdir()
    device_help = subprocess.run([str(venv / "bin" / "spd-device"), "--help"], cwd=outside, env=env,
                                 capture_output=True, text=True, timeout=60)
    assert device_help.returncode == 0, device_help.stderr
    for command in ("run", "provision", "doctor", "log"):
        assert command in device_help.stdout

    probe = (
        "import importlib, pkgutil, device, spd_common, sys\n"
        "assert device.__file__.startswith(sys.prefix), device.__file__\n"
        "assert spd_common.__file__.startswith(sys.prefix), spd_common.__file__\n"
        "modules = [*pkgutil.walk_packages(spd_common.__path__, 'spd_common.'),\n"
        "           *pkgutil.walk_packages(device.__path__, 'device.')]\n"
        "for m in modules:\n"
        "    if not m.name.startswith('device.hal.camera'):\n"  # the camera extra
        "        importlib.import_module(m.name)\n"
        f"for name in {NOT_IN_DEVICE_VENV!r}:\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "print('ok')\n"
    )
    imports = subprocess.run([str(python), "-c", probe], cwd=outside, env=env, capture_output=True, text=True,
                             timeout=60)
    assert imports.stdout.strip() == "ok", imports.stderr

    for command, extra in ((["spd-gateway", "--help"], "spd-edge[gateway]"), (["spd-sim", "demo"], "spd-edge[sim]")):
        refused = subprocess.run([str(venv / "bin" / command[0]), *command[1:]], cwd=outside, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert extra in refused.stderr and "Traceback" not in refused.stderr
