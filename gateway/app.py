"""The gateway process: ingest, charging worker and HIS sender around one store.

Threads and what each owns:

* ``paho`` network thread (:class:`IngestService`) — the MQTT socket; queues what arrives;
* ``ingest-writer`` (:class:`GroupWriter`) — stores the queued batches, many in one transaction,
  then publishes their acks and acknowledges them to the broker;
* ``charging`` (:class:`ChargingWorker`) — the charging cursor; writes the outbox;
* ``his-sender-N`` (:class:`HisSender`, one per lane) — one HIS connection each; drain the outbox, each lane
  its own rows as one reader (:class:`OutboxFeed`, on a connection of its own) hands them out;
* ``his-recorder`` (:class:`AcceptRecorder`) — writes what the HIS accepted on every lane, many acceptances
  a transaction, so the lanes send without waiting for the store;
* ``lease`` (:class:`Leadership`) — renews the charging lease; with several
  instances on one store, only the holder runs charging (and, alone, the sender);
* ``lease-member`` (a second :class:`Leadership`, only with a share group) — renews this instance's
  membership; every live member sends the charges it claimed (:mod:`gateway.data.claims`);
* ``link-watch`` (:class:`LinkWatch`) — the ``not_linked`` check: an item taken
  from a cabinet and not charged on any device within ``not_linked_within_s``
  raises one alarm (lease holder only);
* ``paho`` network thread of the fleet link (:class:`FleetLink`, only with a
  command-signing key) — reads device state (applied versions), publishes
  signed commands and re-sends desired state to devices that are behind;
* ``adt-accept`` and ``adt-conn-N`` (:class:`AdtListener`, only with ``adt_port``) — the HIS's ADT
  feed over MLLP, kept in the patient census;
* ``catalog-publisher`` (:class:`CatalogPublisher`, with the fleet link; woken by the ADT listener) — pushes
  the device catalog document again after census changes, debounced;
* ``notify-watch`` (:class:`IncidentWatch`, lease holder only) and ``notify-email`` / ``notify-webhook``
  (:class:`NoticeDispatcher`, one per channel in ``[notify]``) — critical alarms as incidents, one notice each
  (:mod:`gateway.notify`);
* prometheus-client's HTTP server thread (only with ``[metrics]``) — ``/metrics`` (:mod:`gateway.metrics`);
* ``web`` (:class:`gateway.web.server.WebServer`, only with ``[web] enabled``) — uvicorn serving the
  supervisor's screen and its API over the same store (docs/web.md);
* ``stock-ledger`` (:class:`~gateway.books.projection.StockProjection`) — turns stored events into stock
  movements from its cursor (lease holder only);
* ``wake-inbox`` (:class:`~gateway.wake.WakeInbox`, one per part this process runs) — wake-ups from the
  gateway's other parts when they run as processes of their own (``--part``, :mod:`gateway.parts`): a
  process started as one part runs only that part's threads above;
* the main thread — start-up, signals, shutdown.

The store is shared; SQLite serialises the writers. Each of these threads
beats a heartbeat (:mod:`spd_common.heartbeat`) named as above (``ingest-mqtt``,
``fleet-mqtt`` for the two network threads), except the ``adt-conn-N``
connection threads, which come and go with the HIS's connections and end on
their own time-outs (see :mod:`gateway.adt`), and the screen's ``web`` thread (a
screen that fails must not restart charging); the systemd watchdog pings only
while all of them beat within their deadlines.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Literal

from gateway import bridge
from gateway.adt import AdtListener
from gateway.books.projection import StockProjection
from gateway.books.settings import BooksSettings
from gateway.broker_acl import fleet_identity
from gateway.catalog_publish import CatalogPublisher
from gateway.charging import ChargingWorker
from gateway.commands import CommandSigner, load_signing_key
from gateway.data.claims import member_lease
from gateway.data.engine import is_postgres_url
from gateway.fleet import Fleet, FleetLink
from gateway.his.adapter import HisAdapter, HisConfigError
from gateway.his.feed import OutboxFeed
from gateway.his.http_adapter import HttpJsonAdapter
from gateway.his.mllp_adapter import MllpAdapter
from gateway.his.recorder import AcceptRecorder
from gateway.his.sender import HisSender
from gateway.ingest import IngestService
from gateway.leader_loop import FOLLOW_STEP, LIVE_STEP
from gateway.lease import Leadership
from gateway.linking import DEFAULT_WINDOW_S, LinkWatch
from gateway.metrics import DEFAULT_OFFLINE_AFTER_S, GatewayMetrics
from gateway.notify import Notifier
from gateway.notify_settings import NotifySettings
from gateway.parts import SPLIT_PARTS, Part, runs
from gateway.store import GatewayStore
from gateway.wake import PartTaken, WakeInbox, Waker, inbox_name
from gateway.wal_checkpoint import WalCheckpointer
from gateway.web.settings import WEB_OFF, WebConfig
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.mqtt import Address, TlsSettings

if TYPE_CHECKING:
    from gateway.web.server import WebServer as WebServerType

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    db_path: Path | str  # a SQLite file, or a postgresql:// URL ([store] url)
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_fallbacks: tuple[Address, ...] = ()  # a broker cluster's other nodes, tried in turn after a drop
    mqtt_version: str = "5"  # "3.1.1" for a clustered engine without MQTT 5 (NATS): no share_group then
    client_id: str = "spd-gateway"
    share_group: str | None = None
    his_protocol: Literal["mllp", "http"] = "mllp"
    his_url: str | None = None  # base URL of the HIS JSON API, for his_protocol="http"
    his_token: str | None = None  # bearer token for the HIS JSON API
    his_host: str = "127.0.0.1"
    his_port: int = 2575
    his_timeout_s: float = 5.0
    his_backoff_max_s: float = 30.0
    his_lanes: int = 4  # parallel HIS connections; a patient's charges always share one
    lease_ttl_s: float = 6.0
    facility: str = "HOSP"
    sending_facility: str = "SPD"
    tls: TlsSettings | None = None
    # the fleet link's own certificate (CN ``{client_id}-fleet``): the broker makes a connection's client id
    # its certificate's CN, so the fleet link and ingest on one certificate would close each other's connection
    fleet_tls: TlsSettings | None = None
    signing_key: Path | None = None  # the command-signing key: run the fleet link (state in, commands out)
    adt_host: str = "127.0.0.1"  # the ADT listener's bind address
    adt_port: int | None = None  # None = no ADT listener
    discharge_grace_s: float = 86400.0  # charges for a stay are still accepted this long after discharge
    not_linked_within_s: float = DEFAULT_WINDOW_S  # a cabinet take not charged on any device by then: one alarm
    metrics_listen: str | None = None  # host:port of the /metrics HTTP server; None: not served
    metrics_offline_after_s: float = DEFAULT_OFFLINE_AFTER_S  # silent this long: counted offline in the metrics
    notify: NotifySettings = field(default_factory=NotifySettings)  # incident checks and notice channels
    web: WebConfig = WEB_OFF  # the supervisor's screen; served by `run` too when web.enabled
    books: BooksSettings = field(default_factory=BooksSettings)  # [books]: stock alerts and replenishment
    part: Part = "all"  # [run] part: the whole gateway, or one of its three parts (gateway.parts)


def make_his_adapter(config: GatewayConfig) -> HisAdapter:
    """The HIS adapter the configuration names: HL7 v2 over MLLP, or JSON over HTTP."""
    if config.his_protocol == "mllp":
        return MllpAdapter(config.his_host, config.his_port, timeout_s=config.his_timeout_s)
    if config.his_protocol == "http":
        if not config.his_url:
            raise HisConfigError("missing_url", "his_protocol 'http' needs his_url")
        return HttpJsonAdapter(config.his_url, timeout_s=config.his_timeout_s, token=config.his_token)
    raise HisConfigError("bad_protocol", f"his_protocol must be 'mllp' or 'http', got {config.his_protocol!r}")


def make_fleet_link(store: GatewayStore, config: GatewayConfig, *,
                    heartbeats: HeartbeatRegistry | None = None) -> FleetLink:
    """The fleet's own MQTT connection with a :class:`Fleet` that signs with ``config.signing_key``."""
    if config.signing_key is None:
        raise ValueError("the fleet link needs the command-signing key")
    if config.tls is not None and config.fleet_tls is None:
        raise ValueError(f"over TLS the fleet link needs its own certificate (CN {fleet_identity(config.client_id)})")
    link = FleetLink(store, host=config.broker_host, port=config.broker_port, tls=config.fleet_tls,
                     client_id=fleet_identity(config.client_id), heartbeats=heartbeats,
                     fallbacks=config.broker_fallbacks, mqtt_version=config.mqtt_version)
    link.fleet = Fleet(store, CommandSigner(load_signing_key(config.signing_key)), link.publish)
    return link


class Gateway:
    """Assembles and runs the gateway's services: all of them, or one part's (:mod:`gateway.parts`)."""

    def __init__(self, config: GatewayConfig, *, adapter: HisAdapter | None = None,
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        self.config = config
        part = config.part
        self.part = part
        # every loop that must run beats here; the systemd watchdog pings only while all of them do
        self.heartbeats = heartbeats or HeartbeatRegistry()
        self.store = GatewayStore(config.db_path)
        # the inboxes before any service: a second process of a part that runs already stops here, started nothing
        self._inboxes: list[WakeInbox] = []
        self._own_stores: list[GatewayStore] = []  # connections of this part's loops (_derived_store)
        self._wakers: list[Waker] = []
        try:
            for piece in SPLIT_PARTS:
                if runs(part, piece):
                    self._inboxes.append(WakeInbox(self._inbox(piece), self._woken(piece), part=piece))
        except PartTaken:
            for inbox in self._inboxes:
                inbox.close()
            self.store.close()
            raise
        self._poke_books = self._waker("books")  # used only where that part runs in another process
        self._poke_his = self._waker("his")
        # the parts of one gateway hold its charging lease together (same holder): they act as one instance
        # on SQLite the leases are renewed on a connection of their own: behind the other loops' turns on the
        # shared one a renewal came late under load, and the holder paused (no fsync: a renewal lost to a
        # power cut only lets the lease run out sooner)
        self.lease_store = None if is_postgres_url(config.db_path) else GatewayStore(config.db_path,
                                                                                    synchronous="NORMAL")
        lease_store = self.lease_store or self.store
        # (parts do not give it back at stop: the other part may still act on it)
        self.leadership = Leadership(lease_store, config.client_id, ttl_s=config.lease_ttl_s,
                                     heartbeats=self.heartbeats, release_at_stop=part == "all") \
            if part != "ingest" else None
        his_here = runs(part, "his")
        # in a share group every live instance sends the charges it claimed; alone, the lease holder sends all
        self.membership = Leadership(lease_store, config.client_id, ttl_s=config.lease_ttl_s,
                                     heartbeats=self.heartbeats, lease=member_lease(config.client_id),
                                     role="sends its share of the outbox") \
            if config.share_group and his_here else None
        self.metrics_store: GatewayStore | None = None
        self.outbox_store: GatewayStore | None = None
        self.metrics: GatewayMetrics | None = None
        self.feed: OutboxFeed | None = None
        self.recorder: AcceptRecorder | None = None
        self.senders: list[HisSender] = []
        self.notifier: Notifier | None = None
        if his_here:
            self._build_his(config, adapter)
        self.charging: ChargingWorker | None = None
        self.link_watch: LinkWatch | None = None
        self.stock_ledger: StockProjection | None = None
        self.fleet_link: FleetLink | None = None
        self.publisher: CatalogPublisher | None = None
        self.adt: AdtListener | None = None
        self.web: WebServerType | None = None
        if runs(part, "books"):
            self._build_books(config)
        self.ingest = IngestService(
            self.store,
            host=config.broker_host,
            port=config.broker_port,
            client_id=config.client_id,
            share_group=config.share_group,
            tls=config.tls,
            on_stored=lambda n: self._charging_wake(),
            heartbeats=self.heartbeats,
            fallbacks=config.broker_fallbacks,
            mqtt_version=config.mqtt_version,
            # the ingest part waits for the file's writers' turn before it takes a group: what queued while
            # the other parts wrote joins it (one process serves its loops on one connection instead)
            group_in_turn=part == "ingest",
        ) if runs(part, "ingest") else None
        # on SQLite the part that writes the events copies the log into the database outside the writers' turns
        self.checkpointer = WalCheckpointer(config.db_path, heartbeats=self.heartbeats) \
            if self.ingest is not None and not is_postgres_url(config.db_path) else None
        if self.metrics is not None:
            self.metrics.watch(self)
        self._stopped = threading.Event()

    def _build_his(self, config: GatewayConfig, adapter: HisAdapter | None) -> None:
        """The HIS lanes, their outbox reader and recorder, the incident watch and the metrics."""
        assert self.leadership is not None
        claims = self.store.claims
        due = (lambda limit: claims.claim_due(config.client_id, now=time.time(), limit=limit)) \
            if self.membership is not None else None
        lanes = 1 if adapter is not None else config.his_lanes
        # a scrape reads on its own connection: in WAL mode it neither waits for nor holds up the loops' writes
        self.metrics_store = GatewayStore(config.db_path, synchronous="NORMAL")
        self.metrics = GatewayMetrics(self.metrics_store, lanes=lanes, protocol=config.his_protocol,
                                      offline_after_s=config.metrics_offline_after_s)
        # one reader of the outbox for every lane, on its own connection: in WAL mode its reads wait for no writer
        self.outbox_store = GatewayStore(config.db_path, synchronous="NORMAL")
        self.feed = OutboxFeed(self.outbox_store, lanes, due=due)
        # what the HIS accepted, written for every lane by one thread, so a lane never waits for the store
        self.recorder = AcceptRecorder(self._derived_store() or self.store, self.feed, heartbeats=self.heartbeats)
        self.senders = [
            HisSender(
                self.store,
                adapter or make_his_adapter(config),
                backoff_max_s=config.his_backoff_max_s,
                may_run=self.leadership.is_leader if self.membership is None else self.membership.is_leader,
                lane=lane,
                lanes=lanes,
                heartbeats=self.heartbeats,
                on_round_trip=self.metrics.round_trip_observer(lane),
                feed=self.feed,
                recorder=self.recorder,
            )
            for lane in range(lanes)
        ]
        self.notifier = Notifier(self.store, config.notify, gateway=config.client_id, his_lanes=lambda: self.senders,
                                 may_run=self.leadership.is_leader, heartbeats=self.heartbeats)

    def _build_books(self, config: GatewayConfig) -> None:
        """The loops that follow the stored events, and the services that talk to devices and people."""
        leadership = self.leadership
        assert leadership is not None
        bridge_config = bridge.BridgeConfig(
            sending_facility=config.sending_facility, receiving_facility=config.facility
        )
        # in a process of its own, charging has a connection of its own too: on SQLite one connection serves
        # one thread at a time, and charging, the part's one loop on the scans' way to the HIS, waited 60 % of
        # its time there for the stock ledger and the link watch at 1,000 scans/s
        self.charging = ChargingWorker(
            self._derived_store() or self.store, bridge_config, on_charges=lambda n: self._senders_wake(),
            may_run=leadership.is_leader, lease_term=lambda: leadership.term, heartbeats=self.heartbeats,
            batch_size=LIVE_STEP,
        )
        followers = self._derived_store() or self.store  # the link watch and the stock ledger
        self.fleet_link = (make_fleet_link(self.store, config, heartbeats=self.heartbeats)
                           if config.signing_key is not None else None)
        self.publisher = CatalogPublisher(self.store, lambda: self.fleet, discharge_grace_s=config.discharge_grace_s,
                                          heartbeats=self.heartbeats) if self.fleet_link is not None else None
        self.adt = AdtListener(self.store, host=config.adt_host, port=config.adt_port, on_change=self._census_changed,
                               heartbeats=self.heartbeats) if config.adt_port is not None else None
        self.link_watch = LinkWatch(followers, window_s=config.not_linked_within_s, batch_size=FOLLOW_STEP,
                                    may_run=leadership.is_leader, heartbeats=self.heartbeats)
        self.stock_ledger = StockProjection(followers, utc_offset_minutes=config.books.utc_offset_minutes,
                                            batch_size=FOLLOW_STEP, may_run=leadership.is_leader,
                                            heartbeats=self.heartbeats)

    def _derived_store(self) -> GatewayStore | None:
        """A SQLite connection of its own, without an fsync at each commit, for a loop of a part process that
        writes only what it derives from the stored events (charging, the HIS recorder, the link watch, the
        stock ledger); None elsewhere (one process: its loops share the store; PostgreSQL: a pool already).

        On SQLite the three parts take turns on the file's one writer, and at 1,000 scans/s half of the
        time they held it went on the fsync of each commit. Without it (``synchronous=NORMAL``, WAL) a
        commit is atomic and in order, and durable at the next fsync of the file: the next ingest commit,
        a few tens of milliseconds later, or a checkpoint. What a power cut can take is the last of these
        loops' transactions, never an event (ingest commits with an fsync before it acks), and each is
        done again from the events and its cursor, which went with it: the same charges under the same
        ids (a charge id is its event's device and seq, and the HIS books a charge id once, as it does a
        resend after a lost answer: docs/his.md), the same acceptances when the HIS answers again, the
        same links and stock movements.
        """
        if self.part == "all" or is_postgres_url(self.config.db_path):
            return None
        store = GatewayStore(self.config.db_path, synchronous="NORMAL")
        self._own_stores.append(store)
        return store

    # ------------------------------------------------------------ wake-ups, in this process or another

    def _inbox(self, piece: Part) -> str:
        return inbox_name(str(self.config.db_path), self.config.client_id, piece)

    def _woken(self, piece: Part) -> Callable[[], None]:
        """What a datagram to ``piece``'s inbox does: wake that part's loop that waits for the others."""
        if piece == "books":
            return lambda: self.charging.notify() if self.charging is not None else None
        if piece == "his":
            return self._notify_senders
        return lambda: None  # nothing wakes ingest: the devices do

    def _waker(self, piece: Part) -> Callable[[], None]:
        waker = Waker(self._inbox(piece))
        self._wakers.append(waker)
        return waker.poke

    def _charging_wake(self) -> None:
        if self.charging is not None:
            self.charging.notify()
        else:
            self._poke_books()

    def _senders_wake(self) -> None:
        if self.senders:
            self._notify_senders()
        else:
            self._poke_his()

    @property
    def fleet(self) -> Fleet | None:
        """Pushes, unlocks and the device listing; None when the gateway runs without a signing key."""
        return self.fleet_link.fleet if self.fleet_link is not None else None

    def _census_changed(self) -> None:
        if self.publisher is not None:
            self.publisher.changed()

    def _notify_senders(self) -> None:
        for sender in self.senders:
            sender.notify()

    def start(self) -> Gateway:
        for inbox in self._inboxes:
            inbox.start()
        if self.config.metrics_listen is not None and self.metrics is not None:
            # first: a port taken stops the start before any loop runs
            self.metrics.serve(self.config.metrics_listen)
        if self.leadership is not None:
            self.leadership.start()
        if self.membership is not None:
            self.membership.start()
        if self.charging is not None:
            self.charging.start()
        if self.recorder is not None:
            self.recorder.start()
        for sender in self.senders:
            sender.start()
        for loop in (self.link_watch, self.notifier, self.stock_ledger):
            if loop is not None:
                loop.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.ingest is not None:
            self.ingest.start()
        if self.fleet_link is not None:
            self.fleet_link.start()
        if self.publisher is not None:
            self.publisher.start()
        if self.adt is not None:
            self.adt.start()
        if self.config.web.enabled and runs(self.part, "books"):
            from gateway.web.server import WebServer
            from gateway.web.unlock import fleet_unlock

            fleet = self.fleet
            self.web = WebServer(self.store, self.config.web,
                                 unlock=fleet_unlock(fleet) if fleet is not None else None,
                                 books=self.config.books).start()
        return self

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.web is not None:
            self.web.stop()
        if self.adt is not None:
            self.adt.stop()
        if self.publisher is not None:
            self.publisher.stop()
        if self.fleet_link is not None:
            self.fleet_link.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.charging is not None:
            self.charging.stop()
        for sender in self.senders:
            sender.stop()
        if self.recorder is not None:
            self.recorder.stop()  # after the lanes: what they were answered is written before the store closes
        for loop in (self.link_watch, self.notifier, self.stock_ledger):
            if loop is not None:
                loop.stop()
        if self.leadership is not None:
            self.leadership.stop()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        for extra in (self.metrics_store, self.outbox_store, *self._own_stores):
            if extra is not None:
                extra.close()
        if self.membership is not None:
            self.membership.stop()
            try:
                self.store.claims.release(self.config.client_id)
            except Exception:
                log.exception("releasing the charge claims failed")
        if self.lease_store is not None:
            self.lease_store.close()
        for inbox in self._inboxes:
            inbox.close()
        for waker in self._wakers:
            waker.close()
        self.store.close()
        self._stopped.set()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down cleanly; tells systemd (Type=notify) when run by it.

        ``READY=1`` once every service started, ``WATCHDOG=1`` while every loop
        beats on time (:mod:`spd_common.heartbeat`) and the store answers,
        ``STOPPING=1`` at shutdown; outside systemd these are no-ops.
        """
        from spd_common.sdnotify import Watchdog, notify

        def _stop(signum: int, frame: FrameType | None) -> None:
            log.info("gateway: signal %d, stopping", signum)
            self._stopped.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start()
        log.info("gateway: running %s (bridge: %s, fleet link %s, ADT listener %s, screen %s)",
                 "all parts" if self.part == "all" else f"its {self.part} part", bridge.IMPLEMENTATION,
                 "on" if self.fleet_link is not None else "off",
                 f"on {self.config.adt_host}:{self.config.adt_port}" if self.adt is not None else "off",
                 f"on {self.web.url}" if self.web is not None else "off")
        notify("READY=1")
        watchdog = Watchdog(self.store.alive, heartbeats=self.heartbeats).start()
        try:
            while not self._stopped.wait(1.0):
                pass
        finally:
            notify("STOPPING=1")
            watchdog.stop()
            self.stop()
