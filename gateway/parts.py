"""The gateway's work cut in three parts, each of which can run as a process of its own on one store.

One gateway process runs everything (``all``, the default). At a thousand scans a second its threads
need more than one interpreter can give them (docs/scale.md, "One host at 1,000 scans a second"), so
the same program can run as three processes, each with its own interpreter, started from one
configuration file (``spd-gateway run --part ingest|books|his``; the systemd template unit
``spd-gateway@.service`` runs one per part):

* ``ingest`` — the MQTT subscription, group commit, the devices' acks;
* ``books`` — the loops that follow the stored events (charging, the link watch, the stock ledger), and
  the services that talk to devices and people (fleet link, catalog publisher, ADT listener, screen);
* ``his`` — the HIS lanes, their outbox reader and recorder, the incident watch (it judges the lanes),
  and ``/metrics`` (the HIS round trips are measured here).

The parts talk only through the store, as several gateway instances already do (cursors, the outbox,
leases), and wake each other with a datagram (:mod:`gateway.wake`) where one process calls a
service's ``notify``. The parts of one gateway act as one instance: they share its client id, so they
hold its ``charging`` lease together, and another instance takes over only when all of them are gone.
"""

from __future__ import annotations

from typing import Literal

Part = Literal["all", "ingest", "books", "his"]
PARTS: tuple[Part, ...] = ("all", "ingest", "books", "his")
SPLIT_PARTS: tuple[Part, ...] = ("ingest", "books", "his")


def runs(part: Part, piece: Part) -> bool:
    """Whether a process started as ``part`` runs the piece of work ``piece`` (one of the three)."""
    return part == "all" or part == piece
