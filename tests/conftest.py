"""Shared fixtures: a private Mosquitto per test on a free loopback port, and the spine harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hw_sim.broker import MosquittoBroker
from hw_sim.harness import SpineHarness


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(workdir=tmp_path / "broker").start()
    yield b
    b.close()


@pytest.fixture
def spine(tmp_path: Path) -> Iterator[SpineHarness]:
    h = SpineHarness(tmp_path / "spine").start()
    yield h
    h.close()
