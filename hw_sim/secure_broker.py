"""A private Mosquitto with the production TLS listener and ACL, on a free loopback port, for tests and demos.

It renders ``deploy/mosquitto/spd.conf.template`` and the generated ACL, so
tests exercise the files a hospital installs, with a site CA made here.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.broker_acl import DEFAULT_TEMPLATE, BrokerPaths, render_acl, render_config
from gateway.pki import GATEWAY_IDENTITY, CertRole, SiteCA, write_private_key
from hw_sim.broker import MosquittoBroker
from spd_common.mqtt import TlsSettings, make_client


class SecureBroker(MosquittoBroker):
    """Mosquitto with mutual TLS, client id = certificate CN, the site ACL and the CA's CRL."""

    def __init__(self, ca: SiteCA, *, sites: tuple[str, ...], workdir: Path, port: int | None = None,
                 gateways: tuple[str, ...] = (GATEWAY_IDENTITY,)) -> None:
        super().__init__(port=port, workdir=workdir)
        self.ca = ca
        self.sites = sites
        self.gateways = gateways
        key, cert = ca.issue_with_new_key("spd-broker", role=CertRole.SERVER, dns_names=("localhost",),
                                          ip_addresses=("127.0.0.1",))
        self.cert_file = self.workdir / "broker.crt"
        self.key_file = self.workdir / "broker.key"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(self.key_file, key)
        self.acl_file = self.workdir / "acl"

    def _write_config(self) -> None:
        self.acl_file.write_text(render_acl(self.sites, gateways=self.gateways))
        paths = BrokerPaths(ca_file=self.ca.ca_path, cert_file=self.cert_file, key_file=self.key_file,
                            crl_file=self.ca.crl_path, acl_file=self.acl_file, persistence_dir=self.workdir)
        text = render_config(DEFAULT_TEMPLATE.read_text(), paths, port=self.port, bind=self.host,
                             persistence=self.persistence, log_dest="stderr")
        # as root, mosquitto would drop to its own user, who cannot read a test's private directory
        run_as = "user root\n" if os.geteuid() == 0 else ""
        self.conf_path.write_text(text + run_as + self.extra_config + "\n")

    def client_tls(self, name: str, *, role: CertRole = CertRole.DEVICE) -> TlsSettings:
        """Make a key and certificate for ``name`` in the broker's workdir and return the TLS settings."""
        key, cert = self.ca.issue_with_new_key(name, role=role)
        d = self.workdir / "clients" / name
        d.mkdir(parents=True, exist_ok=True)
        write_private_key(d / "client.key", key)
        (d / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return TlsSettings(str(self.ca.ca_path), str(d / "client.crt"), str(d / "client.key"))

    def gateway_tls(self, identity: str = GATEWAY_IDENTITY) -> TlsSettings:
        """A certificate for one of the gateway's connections (see :func:`gateway.broker_acl.gateway_identities`).

        The broker makes a connection's client id its certificate's common name,
        so each gateway connection that is up at the same time needs its own.
        """
        return self.client_tls(identity, role=CertRole.GATEWAY)


class MqttProbe:
    """A blocking MQTT v5 test client that records what the broker answered: CONNACK, SUBACKs, PUBACKs, messages."""

    def __init__(self, host: str, port: int, *, tls: TlsSettings | None, client_id: str,
                 tls_without_cert: bool = False, timeout_s: float = 5.0, session_expiry_s: int | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        self.timeout_s = timeout_s
        self.connects = 0  # CONNACKs that accepted the connection (paho reconnects by itself)
        self.disconnects = 0
        self.connack: ReasonCode | None = None
        self.error: str = ""
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        c = make_client(client_id, tls=tls, client_cert=not tls_without_cert, reconnect_min_s=0.2,
                        reconnect_max_s=0.5, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                        on_message=self._on_message)
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        if will is not None:
            c.will_set(will[0], will[1], qos=1)
        self.dropped = False
        self.client = c
        props = None
        if session_expiry_s is not None:  # a persistent session, as the gateway (and mosquitto_sub -c -x) asks
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry_s
        try:
            c.connect(host, port, keepalive=10, clean_start=session_expiry_s is None, properties=props)
        except (OSError, ssl.SSLError) as err:
            self.error = f"{type(err).__name__}: {err}"
            return
        c.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self.connack is not None or not self._alive(), timeout_s)

    def _alive(self) -> bool:
        return self.client.is_connected() or (self.connack is None and self.client._sock is not None)

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and self.client.is_connected()

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self.connack = rc
            self.connects += 0 if rc.is_failure else 1
            self._cond.notify_all()

    def _on_disconnect(self, c: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self.dropped = True
            self.disconnects += 1
            self.error = self.error or str(rc)
            self._cond.notify_all()

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        with self._cond:
            self.subacks[mid] = rcs
            self._cond.notify_all()

    def _on_publish(self, c: mqtt.Client, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        with self._cond:
            self.pubacks[mid] = rc
            self._cond.notify_all()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def subscribe(self, topic_filter: str) -> ReasonCode:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        with self._cond:
            self._cond.wait_for(lambda: mid in self.subacks, self.timeout_s)
        return self.subacks[mid][0]

    def publish(self, topic_text: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic_text, payload, qos=1, retain=retain)
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self.pubacks, self.timeout_s)
        return self.pubacks[info.mid]

    def wait_messages(self, n: int, timeout_s: float = 5.0) -> list[tuple[str, bytes, bool]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout_s)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
