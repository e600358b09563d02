"""The gateway run as three processes, one per part (``spd-gateway run --part ingest|books|his``).

The parts share one configuration file and one store, talk through the store and wake each other with a
datagram (:mod:`gateway.wake`). Here they run as the systemd template units start them, on SQLite and on
PostgreSQL, with parts SIGKILLed and started again mid-run: every scan stored and charged once, every
return credited once; and a second process of a part that runs already does not start.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.config import config_from_args, read_gateway_file
from gateway.wake import PartTaken, WakeInbox, Waker, inbox_name
from hw_sim.harness import SpineHarness
from spd_common.toml_config import ConfigError

from conftest import wait_for

# ------------------------------------------------------------------ the wake-up and its exclusivity


def test_a_poke_wakes_the_inbox_and_a_second_inbox_of_the_part_is_refused(tmp_path: Path) -> None:
    name = inbox_name(str(tmp_path / "gw.db"), "spd-gateway", "books")
    woken = threading.Event()
    inbox = WakeInbox(name, woken.set, part="books").start()
    try:
        with pytest.raises(PartTaken, match="'books' part"):
            WakeInbox(name, lambda: None, part="books")
        waker = Waker(name)
        waker.poke()
        assert woken.wait(2.0)
        waker.close()
        # another gateway (client id) or another store is another inbox
        other = WakeInbox(inbox_name(str(tmp_path / "gw.db"), "spd-gateway-b", "books"), lambda: None, part="books")
        other.close()
    finally:
        inbox.close()
    WakeInbox(name, lambda: None, part="books").close()  # free again once the first is closed


def test_a_poke_to_a_part_that_is_not_running_is_lost_quietly(tmp_path: Path) -> None:
    waker = Waker(inbox_name(str(tmp_path / "gw.db"), "spd-gateway", "his"))
    waker.poke()  # no inbox: nothing raised, the part looks at the store on its own when it runs
    waker.close()


# ------------------------------------------------------------------ configuration


def test_the_part_comes_from_the_file_and_the_flag_overrides_it(tmp_path: Path) -> None:
    from gateway.cli import build_parser

    conf = tmp_path / "gateway.toml"
    conf.write_text('[run]\npart = "his"\n\n[store]\npath = "gw.db"\n', encoding="utf-8")
    assert read_gateway_file(conf)["part"] == "his"
    parser = build_parser()
    assert config_from_args(parser.parse_args(["run", "--config", str(conf)])).part == "his"
    assert config_from_args(parser.parse_args(["run", "--config", str(conf), "--part", "books"])).part == "books"
    conf.write_text('[store]\npath = "gw.db"\n', encoding="utf-8")
    assert config_from_args(parser.parse_args(["run", "--config", str(conf)])).part == "all"
    conf.write_text('[run]\npart = "charging"\n\n[store]\npath = "gw.db"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run\.part"):
        read_gateway_file(conf)


# ------------------------------------------------------------------ the parts as processes


def _assert_exact(h: SpineHarness, scans: int) -> None:
    t = h.wait_settled(90)
    assert t.scans == scans and (t.stored, t.charged) == (scans, scans), t.as_dict()
    assert (t.lost, t.duplicates, t.invented, t.chain_breaks) == (0, 0, 0, 0), t.as_dict()
    assert t.returns > 0
    wait_for(lambda: h.tally().credited >= t.returns, timeout=30, interval=0.2, message="every return credited")
    t = h.tally()
    assert t.credited == t.returns and (t.credits_lost, t.credits_duplicated) == (0, 0), t.as_dict()


def _run_parts(workdir: Path, store_url: str | None) -> None:
    h = SpineHarness(workdir, store_url=store_url, lease_ttl_s=2.0)
    h.parts = True
    h.start()
    try:
        books, his = h.gateway_parts[0]
        wait_for(lambda: "its books part" in books.output() and "its his part" in his.output(), timeout=30,
                 message="the books and his parts running")
        h.start_handheld("HH01", scans=150, rate=60, return_rate=0.15)
        h.start_handheld("HH02", scans=150, rate=60, return_rate=0.15)
        time.sleep(1.0)
        books.kill()  # charging stops mid-stream; systemd would start it again, as here
        books.start()
        time.sleep(1.0)
        his.kill()  # a HIS lane may have been answered and its recorder not have written it yet
        his.start()
        time.sleep(0.5)
        h.kill_gateway(0)  # every part at once, then started again
        h.start_gateway(0)
        h.wait_handhelds(90)
        _assert_exact(h, 300)
    finally:
        h.close()


@pytest.mark.slow
def test_the_parts_on_sqlite_killed_mid_stream_lose_and_double_nothing(tmp_path: Path) -> None:
    _run_parts(tmp_path / "parts", None)


@pytest.mark.slow
def test_the_parts_on_postgresql_killed_mid_stream_lose_and_double_nothing(tmp_path: Path, pg_url: str) -> None:
    _run_parts(tmp_path / "parts", pg_url)


def test_a_second_process_of_a_running_part_does_not_start(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[store]\npath = "{tmp_path / "gw.db"}"\n\n[broker]\nport = 1\n', encoding="utf-8")
    run = [sys.executable, "-m", "gateway.cli", "-v", "run", "--config", str(conf)]
    log = tmp_path / "books.log"
    with open(log, "wb") as out:
        first = subprocess.Popen([*run, "--part", "books"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "running its books part" in log.read_text(errors="replace"), timeout=30,
                 message="the books part up")
        second = subprocess.run([*run, "--part", "books"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another process of this gateway already runs its 'books' part" in second.stderr
        whole = subprocess.run(run, capture_output=True, text=True, timeout=60)  # all parts: books among them
        assert whole.returncode == 1 and "'books' part" in whole.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)
