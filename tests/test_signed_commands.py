"""Signed remote commands through a real TLS broker: every refusal recorded with its reason, and the replay window."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.eventlog import EventLog
from device.remote import CommandResult, CommandVerifier, RemoteCommands, ReplayGuard, SignedCommand, allow_kinds
from device.sync import DeviceSync
from gateway.commands import CommandSigner
from gateway.pki import SiteCA
from hw_sim.secure_broker import MqttProbe, SecureBroker
from spd_common.command_schema import CommandKind
from spd_common.mqtt import TlsSettings

from conftest import wait_for

SITE, DEV = "H1", "CAB01"
CMD_TOPIC = f"spd/v1/{SITE}/{DEV}/cmd"
STATE_TOPIC = f"spd/v1/{SITE}/{DEV}/state"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("cmds")
    ca = SiteCA.create(d / "ca", site=SITE)
    b = SecureBroker(ca, sites=(SITE,), workdir=d / "broker").start()
    gw = MqttProbe(b.host, b.port, tls=b.gateway_tls(), client_id="gw")
    assert gw.connected
    assert not gw.subscribe(STATE_TOPIC).is_failure  # each Device waits for its "online" state
    yield {"broker": b, "gw": gw, "dev_tls": b.client_tls(DEV), "key": Ed25519PrivateKey.generate()}
    gw.close()
    b.close()
    ca.close()


class Device:
    """The device's side: event log, replay guard, verifier and sync over TLS, with an unlock handler."""

    def __init__(self, tmp: Path, env: dict[str, object], *, window: int = 0,
                 kinds: tuple[CommandKind, ...] = (CommandKind.UNLOCK, CommandKind.DESIRED_STATE)) -> None:
        key = env["key"]
        b = env["broker"]
        assert isinstance(key, Ed25519PrivateKey) and isinstance(b, SecureBroker)
        tls = env["dev_tls"]
        assert isinstance(tls, TlsSettings)
        self.log = EventLog(tmp / "events.db", device=DEV)
        self.replay = ReplayGuard(tmp / "commands.db", window=window)
        self.unlocked: list[int] = []
        self.remote = RemoteCommands(
            CommandVerifier(key.public_key(), device=DEV, site=SITE), self.replay, self.log,
            handlers={CommandKind.UNLOCK: self._unlock, CommandKind.DESIRED_STATE: lambda c: None},
            policy=allow_kinds(*kinds))
        self.results: list[CommandResult] = []
        self._cond = threading.Condition()
        self.sync = DeviceSync(self.log, site=SITE, host=b.host, port=b.port, tls=tls, on_command=self._on_command,
                               reconnect_min_s=0.2, reconnect_max_s=1.0)
        gw = env["gw"]
        assert isinstance(gw, MqttProbe)
        seen = len(gw.messages)
        self.sync.start()
        # The device subscribes to its cmd topic, then publishes its "online" state, on one connection:
        # the broker handles a client's packets in order, so once that state arrives the subscription is in place.
        wait_for(lambda: any(t == STATE_TOPIC and b'"online"' in p for t, p, _ in gw.messages[seen:]),
                 message="the device online and subscribed")

    def _unlock(self, cmd: SignedCommand) -> None:
        self.unlocked.append(cmd.seq)

    def _on_command(self, payload: bytes, retained: bool) -> None:
        r = self.remote.handle(payload, retained=retained)
        with self._cond:
            self.results.append(r)
            self._cond.notify_all()

    def wait(self, n: int) -> list[CommandResult]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results) >= n, 10), f"{len(self.results)} of {n} results"
            return list(self.results)

    def alarms(self) -> list[dict[str, object]]:
        return [e.body for e in self.log.events() if e.kind == "alarm"]

    def close(self) -> None:
        self.sync.stop()
        self.replay.close()
        self.log.close()


@pytest.fixture
def device(tmp_path: Path, env: dict[str, object]) -> Iterator[Device]:
    d = Device(tmp_path, env)
    yield d
    d.close()


def signer(env: dict[str, object]) -> CommandSigner:
    key = env["key"]
    assert isinstance(key, Ed25519PrivateKey)
    return CommandSigner(key)


def send(env: dict[str, object], payload: bytes, *, retain: bool = False) -> None:
    gw = env["gw"]
    assert isinstance(gw, MqttProbe)
    assert not gw.publish(CMD_TOPIC, payload, retain=retain).is_failure


def unlock(env: dict[str, object], seq: int, **kw: object) -> bytes:
    return signer(env).sign(CommandKind.UNLOCK, device=kw.pop("device", DEV), site=SITE, seq=seq,  # type: ignore[arg-type]
                            requested_by="nurse.li", args={"seconds": 5}, **kw)  # type: ignore[arg-type]


def outcome(r: CommandResult) -> tuple[str, str | None]:
    return (r.outcome.value, r.refusal.value if r.refusal else None)


def test_valid_command_is_accepted_run_once_and_recorded(device: Device, env: dict[str, object]) -> None:
    send(env, unlock(env, 1))
    assert [outcome(r) for r in device.wait(1)] == [("accepted", None)]
    assert device.unlocked == [1]
    access = [e.body for e in device.log.events() if e.kind == "access"]
    assert access == [{"type": "remote_command", "cmd": "unlock", "seq": 1, "by": "nurse.li", "outcome": "accepted"}]
    assert device.replay.high_water == 1


def test_unsigned_command_is_refused(device: Device, env: dict[str, object]) -> None:
    doc = json.loads(unlock(env, 1))
    del doc["sig"]
    send(env, json.dumps(doc).encode())
    assert [outcome(r) for r in device.wait(1)] == [("refused", "unsigned")]
    assert device.unlocked == []
    assert device.alarms() == [{"type": "command_refused", "reason": "unsigned", "cmd": "unlock", "seq": 1,
                                "detail": "command carries no signature"}]


def test_command_signed_with_another_key_is_refused(device: Device, env: dict[str, object]) -> None:
    rogue = CommandSigner(Ed25519PrivateKey.generate())
    send(env, rogue.sign(CommandKind.UNLOCK, device=DEV, site=SITE, seq=1, requested_by="intruder"))
    assert [outcome(r) for r in device.wait(1)] == [("refused", "bad_signature")]
    assert device.unlocked == [] and device.alarms()[0]["reason"] == "bad_signature"


def test_tampered_command_is_refused(device: Device, env: dict[str, object]) -> None:
    doc = json.loads(unlock(env, 1))
    doc["args"]["seconds"] = 3600
    send(env, json.dumps(doc).encode())
    assert [outcome(r) for r in device.wait(1)] == [("refused", "bad_signature")]


def test_command_for_another_device_is_refused(device: Device, env: dict[str, object]) -> None:
    send(env, unlock(env, 1, device="CAB02"))
    assert [outcome(r) for r in device.wait(1)] == [("refused", "wrong_device")]
    assert device.alarms()[0]["detail"] == "addressed to 'CAB02', this is 'CAB01'"


def test_expired_command_is_refused(device: Device, env: dict[str, object]) -> None:
    issued = int(time.time() * 1000) - 200_000
    send(env, unlock(env, 1, lifetime_ms=60_000, now_ms=issued))
    assert [outcome(r) for r in device.wait(1)] == [("refused", "expired")]
    assert device.replay.high_water == 0  # a refused command consumes no sequence number


def test_command_issued_in_the_future_is_refused(device: Device, env: dict[str, object]) -> None:
    send(env, unlock(env, 1, now_ms=int(time.time() * 1000) + 600_000))
    assert [outcome(r) for r in device.wait(1)] == [("refused", "not_yet_valid")]


def test_replayed_command_is_refused(device: Device, env: dict[str, object]) -> None:
    payload = unlock(env, 1)
    send(env, payload)
    send(env, payload)
    assert [outcome(r) for r in device.wait(2)] == [("accepted", None), ("refused", "replayed")]
    assert device.unlocked == [1]
    assert device.alarms()[0]["reason"] == "replayed"


def test_older_sequence_after_a_newer_one_is_refused(device: Device, env: dict[str, object]) -> None:
    older, newer = unlock(env, 3), unlock(env, 5)
    send(env, newer)
    send(env, older)
    assert [outcome(r) for r in device.wait(2)] == [("accepted", None), ("refused", "out_of_order")]
    assert device.unlocked == [5]


def test_local_policy_refuses_a_valid_command(tmp_path: Path, env: dict[str, object]) -> None:
    d = Device(tmp_path, env, kinds=(CommandKind.DESIRED_STATE,))
    send(env, unlock(env, 1))
    assert [outcome(r) for r in d.wait(1)] == [("refused", "policy")]
    assert d.alarms()[0]["detail"] == "unlock is not allowed on this device"
    assert d.replay.high_water == 0
    d.close()


def test_window_accepts_late_unseen_sequences_but_not_replays_or_too_old(tmp_path: Path,
                                                                         env: dict[str, object]) -> None:
    d = Device(tmp_path, env, window=4)
    for seq in (10, 8, 8, 6, 5):
        send(env, unlock(env, seq))
    assert [outcome(r) for r in d.wait(5)] == [
        ("accepted", None), ("accepted", None), ("refused", "replayed"), ("refused", "too_old"),
        ("refused", "too_old")]
    assert d.unlocked == [10, 8]
    d.close()


def test_high_water_mark_survives_a_restart(tmp_path: Path, env: dict[str, object]) -> None:
    d = Device(tmp_path, env)
    send(env, unlock(env, 7))
    d.wait(1)
    d.close()
    again = Device(tmp_path, env)  # same files: a rebooted cabinet
    assert again.replay.high_water == 7
    send(env, unlock(env, 7))
    send(env, unlock(env, 6))
    send(env, unlock(env, 8))
    assert [outcome(r) for r in again.wait(3)] == [
        ("refused", "replayed"), ("refused", "out_of_order"), ("accepted", None)]
    assert again.unlocked == [8]
    again.close()


def test_retained_desired_state_redelivered_on_reconnect_is_not_reapplied_nor_an_alarm(
        tmp_path: Path, env: dict[str, object]) -> None:
    d = Device(tmp_path, env)
    payload = signer(env).sign(CommandKind.DESIRED_STATE, device=DEV, site=SITE, seq=1, requested_by="ops",
                               args={"components": {}})
    send(env, payload, retain=True)
    d.wait(1)
    d.close()
    again = Device(tmp_path, env)
    results = again.wait(1)
    assert [outcome(r) for r in results] == [("already_applied", None)]
    assert again.alarms() == []
    send(env, b"", retain=True)  # clear the retained message
    again.close()
