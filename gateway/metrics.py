"""The gateway's metrics in the Prometheus text format, with the reference client (prometheus-client).

Three sources, one registry per gateway (never the client's global one, so two gateways in one process,
as in the tests, do not mix):

* :class:`StoreCollector` reads the store at scrape time: devices by status, each device's backlog, the
  HIS outbox per lane, charges by status, parked charges, alarms open by kind, quarantined events and
  refused payloads, chain breaks, incident notices by channel and status. Nothing is kept in memory, so
  the figures are the store's and agree across restarts and between gateway instances;
* :class:`ProcessCollector` reads the counters the loops keep anyway (``IngestService.stats``,
  ``ChargingWorker.stats``, each ``HisSender.stats``) at scrape time: the hot paths pay nothing more;
* the HIS round-trip histogram (``spd_his_round_trip_seconds``), observed by each sender lane after every
  send (one ``Histogram.observe``: a lock and a few additions).

:func:`metrics_app` is an ASGI app for the web server (mounted at ``/metrics``);
:meth:`GatewayMetrics.serve` is prometheus-client's own HTTP server, started by ``spd-gateway run`` when the
gateway file has ``[metrics]``. docs/metrics.md lists every name.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    make_asgi_app,
    start_http_server,
)
from prometheus_client import ProcessCollector as OsProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.his.adapter import HisOutcome
from gateway.his.sender import lane_of
from gateway.store import GatewayStore

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from gateway.app import Gateway
    from gateway.ingest import IngestStats

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9108"
DEFAULT_OFFLINE_AFTER_S = 120.0  # as spd-gateway devices --offline-after
ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))
DEVICE_STATUSES = ("online", "offline", "unknown")
CHARGE_STATUSES = ("pending", "parked", "voided")  # those that wait; accepted: spd_his_sends_total, counts


class MetricsServeError(RuntimeError):
    """The metrics server cannot listen where ``[metrics] listen`` says (the port is taken, the address is not
    this host's)."""


def device_status(status: str, last_seen: float | None, *, now: float, offline_after_s: float) -> str:
    """online / offline / unknown, by the rule of ``spd-gateway devices``: online only while it says so and was
    heard from within ``offline_after_s``."""
    if last_seen is None:
        return "unknown"
    return "online" if status == "online" and now - last_seen <= offline_after_s else "offline"


class StoreCollector(Collector):
    """Figures read from the store at each scrape."""

    def __init__(self, store: GatewayStore, *, lanes: int, offline_after_s: float = DEFAULT_OFFLINE_AFTER_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lanes = lanes
        self.offline_after_s = offline_after_s
        self._clock = clock
        # alarm events by alarm, kept up to date from the events stored since the last scrape (never re-read)
        self._alarms_seen = Counter[str]()
        self._alarms_after = 0
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return []  # no scrape when registered

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        yield from self._devices()
        yield from self._charges()
        yield from self._ingest()
        yield from self._alarms()
        yield from self._notices()
        took = GaugeMetricFamily("spd_store_scrape_seconds", "How long reading the store for this scrape took")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _devices(self) -> Iterable[Metric]:
        now = self._clock()
        rows = self.store.devices.states()
        by_status = Counter(device_status(r.status, r.last_seen, now=now, offline_after_s=self.offline_after_s)
                            for r in rows)
        devices = GaugeMetricFamily("spd_devices", "Known devices by status (offline: silent longer than "
                                    "offline_after_s, or said so)", labels=["status"])
        for status in DEVICE_STATUSES:
            devices.add_metric([status], by_status.get(status, 0))
        offline = GaugeMetricFamily("spd_devices_offline", "Devices offline (heard from once, not lately)")
        offline.add_metric([], by_status.get("offline", 0))
        backlog = GaugeMetricFamily("spd_device_backlog_events", "Events a device holds not yet acknowledged by "
                                    "the gateway, as it last reported", labels=["site", "device"])
        seen = GaugeMetricFamily("spd_device_last_seen_timestamp_seconds", "When the gateway last heard from a "
                                 "device (unix time)", labels=["site", "device"])
        for r in rows:
            backlog.add_metric([r.site, r.device], r.backlog)
            if r.last_seen is not None:
                seen.add_metric([r.site, r.device], r.last_seen)
        yield from (devices, offline, backlog, seen)

    def _charges(self) -> Iterable[Metric]:
        m = self.store.monitoring
        per_lane = Counter[int]()
        for admission, n in m.pending_by_admission():
            per_lane[lane_of(admission, self.lanes)] += n
        outbox = GaugeMetricFamily("spd_his_outbox_charges", "Charges and credits waiting to be sent to the HIS, "
                                   "per lane", labels=["lane"])
        for lane in range(self.lanes):
            outbox.add_metric([str(lane)], per_lane.get(lane, 0))
        statuses = {status: m.charges_in(status) for status in CHARGE_STATUSES}
        charges = GaugeMetricFamily("spd_charges", "Charges and credits in the store that wait, by status "
                                    "(pending, parked, voided)", labels=["status"])
        for status in CHARGE_STATUSES:
            charges.add_metric([status], statuses[status])
        parked = GaugeMetricFamily("spd_charges_parked", "Charges the HIS refused, waiting for a person to look "
                                   "and re-send")
        parked.add_metric([], statuses["parked"])
        yield from (outbox, charges, parked)

    def _ingest(self) -> Iterable[Metric]:
        m = self.store.monitoring
        for name, doc, value in (
            ("spd_events_quarantined", "Events kept in quarantine (refused with their reason)", m.quarantined()),
            ("spd_bad_payloads", "Payloads refused whole (not an events batch of the contract)", m.bad_payloads()),
            ("spd_chain_breaks", "Hash-chain breaks detected in device event logs", m.chain_breaks()),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g

    def _alarms(self) -> Iterable[Metric]:
        m = self.store.monitoring
        open_by_kind = Counter(self.store.incidents.open_counts())
        open_by_kind["not_linked"] += m.open_link_alarms()
        opened = GaugeMetricFamily("spd_alarms_open", "Alarms open by kind: incidents (door_forced, chain_break, "
                                   "charges_parked, device_offline, his_down) and not_linked takes not yet charged",
                                   labels=["kind"])
        for kind in sorted(set(open_by_kind) | {"door_forced", "chain_break", "charges_parked", "device_offline",
                                                "his_down", "not_linked"}):
            opened.add_metric([kind], open_by_kind.get(kind, 0))
        reported = self._alarm_events()
        events = CounterMetricFamily("spd_device_alarm_events", "Alarm events devices reported, by alarm "
                                     "(door_forced, door_ajar, reader_offline ...)", labels=["alarm"])
        for kind, n in sorted(reported.items()):
            events.add_metric([kind], n)
        yield from (opened, events)

    def _alarm_events(self) -> Counter[str]:
        """Alarm events by alarm: the count of the last scrape plus the events stored since."""
        with self._lock:
            while True:
                rows = self.store.monitoring.alarm_bodies(after_id=self._alarms_after)
                for event_id, body in rows:
                    try:
                        alarm: object = json.loads(body).get("alarm")
                    except (ValueError, AttributeError):
                        alarm = None
                    self._alarms_seen[alarm if isinstance(alarm, str) else "unknown"] += 1
                    self._alarms_after = event_id
                if len(rows) < 10000:
                    return Counter(self._alarms_seen)

    def _notices(self) -> Iterable[Metric]:
        notices = GaugeMetricFamily("spd_incident_notices", "Incident notices by channel and status (pending, "
                                    "sent, failed)", labels=["channel", "status"])
        for (channel, status), n in sorted(self.store.incidents.notice_counts().items()):
            notices.add_metric([channel, status], n)
        yield notices


class ProcessCollector(Collector):
    """This gateway process's own counters, read at scrape time from the loops' stats."""

    def __init__(self, gateway: Gateway, *, protocol: str) -> None:
        self.gateway = gateway
        self.protocol = protocol

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        """The counters of the services this process runs (a gateway run in parts serves its HIS part's)."""
        if self.gateway.ingest is not None:
            yield from self._ingest(self.gateway.ingest.stats)
        if self.gateway.charging is not None:
            charging = self.gateway.charging.stats
            lines = CounterMetricFamily("spd_charging_lines", "Charge lines the charging worker put in the outbox")
            lines.add_metric([], charging.lines)
            rejects = CounterMetricFamily("spd_charging_rejects", "Consumption events the charging bridge refused")
            rejects.add_metric([], charging.rejects)
            yield from (lines, rejects)
        sends = CounterMetricFamily("spd_his_sends", "Sends to the HIS by lane and outcome (accepted, parked: "
                                    "refused for good, retry: no answer)", labels=["protocol", "lane", "outcome"])
        for sender in self.gateway.senders:
            lane = str(sender.lane)
            sends.add_metric([self.protocol, lane, "accepted"], sender.stats.accepted)
            sends.add_metric([self.protocol, lane, "parked"], sender.stats.parked)
            sends.add_metric([self.protocol, lane, "retry"], sender.stats.retries)
        yield sends
        if self.gateway.leadership is not None:
            leader = GaugeMetricFamily("spd_charging_leader", "1 while this process holds the charging lease (runs "
                                       "charging, the HIS lanes and the incident checks)")
            leader.add_metric([], 1 if self.gateway.leadership.is_leader() else 0)
            yield leader

    @staticmethod
    def _ingest(ingest: IngestStats) -> Iterable[Metric]:
        batches = CounterMetricFamily("spd_ingest_batches", "Event batches received and stored by this process")
        batches.add_metric([], ingest.batches)
        events = CounterMetricFamily("spd_events_ingested", "Events received by this process, by outcome (new: "
                                     "stored; duplicate: a resend already stored)", labels=["outcome"])
        events.add_metric(["new"], ingest.events_new)
        events.add_metric(["duplicate"], ingest.events_duplicate)
        quarantined = CounterMetricFamily("spd_ingest_quarantined", "Events this process quarantined")
        quarantined.add_metric([], ingest.quarantined)
        bad = CounterMetricFamily("spd_ingest_bad_payloads", "Payloads this process refused whole")
        bad.add_metric([], ingest.bad_payloads)
        failures = CounterMetricFamily("spd_ingest_store_failures", "Batches not acknowledged because the store "
                                       "failed (the device resends)")
        failures.add_metric([], ingest.store_failures)
        return (batches, events, quarantined, bad, failures)


class GatewayMetrics:
    """One gateway's registry: the store's figures, and this process's once :meth:`watch` is called."""

    def __init__(self, store: GatewayStore, *, lanes: int = 1, protocol: str = "mllp",
                 offline_after_s: float = DEFAULT_OFFLINE_AFTER_S, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.protocol = protocol
        self.registry.register(StoreCollector(store, lanes=lanes, offline_after_s=offline_after_s))
        if process:  # CPU, memory, open files, GC of this process (the client's standard collectors)
            OsProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.his_round_trip = Histogram(
            "spd_his_round_trip_seconds", "From handing a charge to the HIS adapter to its answer (or time-out), "
            "per protocol and lane", ["protocol", "lane", "outcome"], registry=self.registry,
            buckets=ROUND_TRIP_BUCKETS)
        self._server: WSGIServer | None = None

    def round_trip_observer(self, lane: int) -> Callable[[float, HisOutcome], None]:
        """What a sender lane calls after each send (``HisSender(on_round_trip=...)``)."""
        children = {o: self.his_round_trip.labels(self.protocol, str(lane), o.value) for o in HisOutcome}

        def observe(seconds: float, outcome: HisOutcome) -> None:
            children[outcome].observe(seconds)

        return observe

    def watch(self, gateway: Gateway) -> None:
        self.registry.register(ProcessCollector(gateway, protocol=self.protocol))

    def serve(self, listen: str) -> tuple[str, int]:
        """Start prometheus-client's HTTP server on ``host:port`` (a thread); the address it listens on."""
        host, port = parse_listen(listen)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise MetricsServeError(f"metrics.listen: cannot listen on {listen}: {err.strerror or err}") from None
        self._server = server
        bound = server.server_address
        log.info("metrics: serving http://%s:%d/metrics", bound[0], bound[1])
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9108`` for IPv6) as (host, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def metrics_app(store: GatewayStore, *, metrics: GatewayMetrics | None = None, lanes: int = 1) -> Any:
    """An ASGI app answering with the metrics (mount it at ``/metrics``).

    With ``metrics`` (the running gateway's :attr:`Gateway.metrics`) it serves that registry, process
    counters and HIS histogram included; otherwise the store's figures only (a web server in its own
    process has no ingest or HIS lanes of its own to count).
    """
    registry = metrics.registry if metrics is not None else GatewayMetrics(store, lanes=lanes).registry
    return make_asgi_app(registry=registry)
