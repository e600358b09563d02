"""A ward nurse at a real handheld: the ``spd-device run`` process on a pty scanner and simulated pins, scripted.

:func:`handheld_toml` writes the configuration a technician would (``kind =
"handheld"``, ``pin_factory = "sim"``, the pty of a
:class:`hw_sim.scanner.SimSerialScanner` as the scanner port);
:class:`HandheldProcess` starts ``spd-device run`` on it as systemd would
(headless: its verdicts come as lines on standard output) or inside tmux (the
console UI, read back with ``capture-pane``); :func:`shift_codes` is what a
nurse scans in one round — badge, wristband, items, now and then an expired
item or a return, log-out — a pure function of ``(seed, device, round)``.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hw_sim.catalog import sim_catalog
from hw_sim.scanner import SimSerialScanner
from hw_sim.udi_gen import make_udi
from spd_common.allowlist import Badge, Role, hash_pin, write_allowlist

CODE128 = "]C0"  # badges, wristbands and mode cards are printed as Code 128; the scanner sends its AIM identifier
NURSE_BADGE, NURSE_USER = "04A1B2C3", "N0001"
PIN_NURSE_BADGE, PIN_NURSE_USER, PIN_NURSE_PIN = "04A1B2C4", "N0002", "4321"
RETURN_CARD, CHARGE_CARD, LOGOUT_CARD = (f"{CODE128}SPD-MODE-RETURN", f"{CODE128}SPD-MODE-CHARGE",
                                         f"{CODE128}SPD-LOGOUT")
BUZZER_PIN, LED_PIN = 22, 23
TEST_PIN_COST = 2**4


def write_staff(path: Path) -> None:
    write_allowlist(path, [
        Badge(NURSE_BADGE, NURSE_USER, Role.NURSE),
        Badge(PIN_NURSE_BADGE, PIN_NURSE_USER, Role.NURSE, hash_pin(PIN_NURSE_PIN, n=TEST_PIN_COST)),
        Badge("04FFEE01", "R0001", Role.RESTOCKER),
    ])


def handheld_toml(*, device: str, site: str, data_dir: Path, broker_port: int, scanner_url: str,
                  dept: str = "ICU-2", extra: str = "") -> str:
    return f"""
[device]
id = "{device}"
site = "{site}"
kind = "handheld"
data_dir = "{data_dir}"

[broker]
port = {broker_port}

[sync]
resend_after_s = 2.0

[handheld]
dept = "{dept}"
allowlist_file = "allowlist.json"
pin_factory = "sim"
buzzer_pin = {BUZZER_PIN}
led_pin = {LED_PIN}
scanner_ports = ["{scanner_url}"]
{extra}
"""


def item_udi(device: str, n: int, *, expired: bool = False, seed: int = 1) -> str:
    """Item ``n`` of a device: a catalogue GTIN, a serial unique to the device and number."""
    rng = random.Random(f"{seed}/{device}/item/{n}")
    item = rng.choice(sim_catalog())
    today = dt.date.today()
    expiry = today - dt.timedelta(days=rng.randrange(1, 90)) if expired else \
        today + dt.timedelta(days=rng.randrange(200, 900))
    return make_udi(gtin=item.gtin, lot=f"L{rng.randrange(1000, 9999)}", serial=f"{device}S{n:08d}", expiry=expiry,
                    symbology="]d2")


def wristband(rng: random.Random) -> str:
    return f"{CODE128}ZY{rng.randrange(10**10):010d}"


@dataclass(frozen=True, slots=True)
class Scan:
    code: str
    what: str  # badge, wristband, item, expired, return, card


def shift_codes(seed: int, device: str, round_no: int, first_item: int) -> tuple[list[Scan], int]:
    """One nurse round: badge, a patient with 1-4 items (1 in 10 rounds an expired one), 1 in 5 a return.

    Returns the scans and the next free item number.
    """
    rng = random.Random(f"{seed}/{device}/round/{round_no}")
    n = first_item
    scans = [Scan(CODE128 + NURSE_BADGE, "badge"), Scan(wristband(rng), "wristband")]
    used: list[str] = []
    for _ in range(rng.randint(1, 4)):
        code = item_udi(device, n, seed=seed)
        scans.append(Scan(code, "item"))
        used.append(code)
        n += 1
    if rng.random() < 0.1:
        scans.append(Scan(item_udi(device, n, expired=True, seed=seed), "expired"))
        n += 1
    if rng.random() < 0.2:
        scans += [Scan(RETURN_CARD, "card"), Scan(used[0], "return"), Scan(CHARGE_CARD, "card")]
    scans.append(Scan(LOGOUT_CARD, "card"))
    return scans, n


class HandheldProcess:
    """``spd-device run`` for a handheld, with a pty scanner; headless (lines on stdout) or in tmux (the screen)."""

    def __init__(self, workdir: Path, *, device: str = "HH01", site: str = "H1", broker_port: int,
                 tmux: bool = False, extra_toml: str = "", data_dir: Path | None = None,
                 term: str = "xterm-256color") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.scanner = SimSerialScanner(name=f"tty{device}")
        self.data_dir = data_dir or self.workdir / "data"
        write_staff(self.workdir / "allowlist.json")
        self.config_path = self.workdir / "handheld.toml"
        self.config_path.write_text(handheld_toml(device=device, site=site, data_dir=self.data_dir,
                                                  broker_port=broker_port, scanner_url=self.scanner.url,
                                                  extra=extra_toml), encoding="utf-8")
        self.tmux = tmux
        self.term = term
        self.session = f"spd-{device}-{os.getpid()}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self._stopped = False
        self.output: list[str] = []
        self.argv = [sys.executable, "-m", "device.cli", "-v", "run", "--config", str(self.config_path)]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "events.db"

    def start(self, *, timeout_s: float = 20.0) -> HandheldProcess:
        if self.tmux:
            self._start_tmux()
            deadline = time.monotonic() + timeout_s
            while "SCAN YOUR BADGE" not in self.screen() and "running headless" not in self.log_text():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no screen: {self.screen()!r} {self.log_text()[-2000:]}")
                time.sleep(0.05)
            time.sleep(0.3)  # the scanner thread opens its port right after the screen comes up
            return self
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=open(self.workdir / "stderr.log", "a"),  # noqa: SIM115
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_line(rf"scanner {re.escape(self.scanner.url)} online", timeout_s)
        return self

    def _start_tmux(self) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed (apt-get install tmux)")
        env = " ".join(f"{k}={v}" for k, v in (("PYTHONPATH", os.environ.get("PYTHONPATH", "")),) if v)
        cmd = (f"cd {os.getcwd()} && env -u COLUMNS -u LINES {env} TERM={self.term} {' '.join(self.argv)} "
               f"2>>{self.workdir}/stderr.log")
        subprocess.run(["tmux", "new-session", "-d", "-s", self.session, "-x", "50", "-y", "16", cmd], check=True)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout_s: float = 10.0) -> str:
        """The next output line matching ``pattern`` (lines before it are consumed)."""
        deadline = time.monotonic() + timeout_s
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line matching {pattern!r}; output: {self.output[-20:]} "
                                   f"{self.log_text()[-2000:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if rx.search(line):
                return line

    def verdicts(self, n: int, timeout_s: float = 10.0) -> Iterator[str]:
        for _ in range(n):
            yield self.wait_line(r" verdict ", timeout_s)

    def scan(self, code: str) -> None:
        self.scanner.scan(code)

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.session], capture_output=True, text=True,
                             check=False)
        return out.stdout

    def wait_screen(self, text: str, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            shown = self.screen()
            if text in shown:
                return shown
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not on screen:\n{shown}\n{self.log_text()[-2000:]}")
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.session, *keys], check=True)

    def log_text(self) -> str:
        p = self.workdir / "stderr.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        out = subprocess.run(["tmux", "list-panes", "-t", self.session, "-F", "#{pane_pid}"], capture_output=True,
                             text=True, check=False)
        return int(out.stdout.split()[0]) if out.stdout.strip() else None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, as systemd stops it; the exit status (None in tmux). Stopping twice is harmless."""
        rc = None
        if self._stopped:
            return self.proc.returncode if self.proc is not None else None
        self._stopped = True
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(timeout=timeout_s)
        elif self.tmux:
            self.keys("C-c")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and subprocess.run(
                    ["tmux", "has-session", "-t", self.session], capture_output=True, check=False).returncode == 0:
                time.sleep(0.05)
            subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True, check=False)
        self.scanner.close()
        return rc


class NurseShift:
    """A nurse working a handheld for ``items`` item scans at about ``rate`` scans a second, on its own thread."""

    def __init__(self, hh: HandheldProcess, *, items: int, rate: float, seed: int = 1) -> None:
        self.hh = hh
        self.items = items
        self.rate = rate
        self.seed = seed
        self.sent: dict[str, int] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"nurse-{hh.device}", daemon=True)

    def start(self) -> NurseShift:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _work(self) -> None:
        try:
            period = 1.0 / self.rate if self.rate > 0 else 0.0
            next_t = time.monotonic()
            round_no, item_no = 0, 1
            while item_no <= self.items:
                scans, item_no = shift_codes(self.seed, self.hh.device, round_no, item_no)
                round_no += 1
                for s in scans:
                    self.hh.scan(s.code)
                    self.sent[s.what] = self.sent.get(s.what, 0) + 1
                    next_t += period
                    time.sleep(max(0.0, next_t - time.monotonic()))
        except BaseException as err:  # reported by the caller
            self.error = err


def log_counts(db: Path) -> dict[str, int]:
    """A handheld's own record, read-only: events by kind, and how many the gateway has not acknowledged yet."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        counts = {str(k): int(n) for k, n in conn.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind")}
        last, acked = conn.execute("SELECT last_seq, acked_seq FROM head WHERE id = 1").fetchone()
        counts["backlog"] = int(last) - int(acked)
        return counts
    finally:
        conn.close()


def wait_drained(db: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists() and log_counts(db)["backlog"] == 0:
            return True
        time.sleep(0.2)
    return False
