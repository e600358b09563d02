"""``spd-device run`` on simulator backends: sim pins, a pty reader, a badge read through a pty scanner."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from device.commands.run import run
from device.eventlog import EventLog
from hw_sim.pty_serial import PtyPort
from hw_sim.rfid_reader import SimR2000Reader

from conftest import LogWatch, wait_for
from device_configs import cabinet_config


def test_run_command_grants_a_badge_read_from_the_badge_reader(tmp_path: Path) -> None:
    reader = SimR2000Reader(tags_per_s=3000)
    reader.add_tag("3035A875440B5E00000F4247", antennas=(1,))
    scanner = PtyPort(name="ttyScan0")
    cfg = cabinet_config(tmp_path, "CABRUN", reader.url, more=f"""
[cabinet.scanners]
badge_port = "{scanner.url}"
""")
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg,), kwargs={"stop": stop}, daemon=True)
    scanners = LogWatch("device.hal.scanner")
    t.start()
    try:
        db = tmp_path / "data" / "events.db"
        wait_for(lambda: (tmp_path / "data" / "inventory.json").exists(), message="the baseline count")
        scanners.wait(f"scanner {scanner.url} online")  # the badge reader has opened its port
        scanner.write(b"04A1B2C3\r")

        def access() -> list[dict[str, object]]:
            log = EventLog(db, device="CABRUN")
            try:
                return [e.body for e in log.events() if e.kind == "access"]
            finally:
                log.close()

        bodies = wait_for(access, message="the badge's access event")
        assert [(b["result"], b["user"]) for b in bodies] == [("granted", "N0001")]
    finally:
        scanners.close()
        stop.set()
        t.join(10)
        scanner.close()
        reader.close()
    assert not t.is_alive()


def test_the_running_cabinet_checks_scans_against_the_catalog_its_remote_installs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One catalog cache for the remote commands and the scan policy: a pushed catalog applies at the next scan,
    not after a restart (the remote used to install into a second cache the policy never read)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import device.remote_wiring
    import device.scan_policy
    from gateway.commands import public_key_pem

    seen: dict[str, object] = {}
    real_policy, real_build = device.scan_policy.ScanPolicy, device.remote_wiring.build_remote

    def policy(*args: object, **kwargs: object) -> object:
        seen["policy"] = p = real_policy(*args, **kwargs)  # type: ignore[arg-type]
        return p

    def build(*args: object, **kwargs: object) -> object:
        seen["remote"] = r = real_build(*args, **kwargs)  # type: ignore[arg-type]
        return r

    monkeypatch.setattr(device.scan_policy, "ScanPolicy", policy)
    monkeypatch.setattr(device.remote_wiring, "build_remote", build)
    reader = SimR2000Reader(tags_per_s=3000)
    (tmp_path / "command-key.pem").write_bytes(public_key_pem(Ed25519PrivateKey.generate()))
    cfg = cabinet_config(tmp_path, "CABCAT", reader.url, more="""
[remote]
command_key_file = "command-key.pem"
""")
    stop = threading.Event()
    stop.set()  # assemble, start and stop at once
    try:
        assert run(cfg, stop=stop) == 0
    finally:
        reader.close()
    assert seen["remote"].catalog is seen["policy"].cache  # type: ignore[attr-defined]
