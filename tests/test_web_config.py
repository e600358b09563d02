"""The ``[web]`` section of the gateway file and the screen's commands: accounts, API tokens, its certificate."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import read_gateway_file
from gateway.store import GatewayStore
from gateway.web.auth import secret_hash
from gateway.web.passwords import verify_password
from gateway.web.roles import Role
from gateway.web.settings import WebConfig
from spd_common.toml_config import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "gateway.toml"


def _file(tmp_path: Path, web: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f'[store]\npath = "gw.db"\n\n[web]\n{web}\n', encoding="utf-8")
    return p


def test_the_example_serves_the_screen_over_tls_from_the_site_ca() -> None:
    web = read_gateway_file(EXAMPLE)["web"]
    assert web.enabled and web.host == "0.0.0.0" and web.port == 8443
    assert web.cert_file == EXAMPLE.parent / "tls/web.crt" and web.key_file == EXAMPLE.parent / "tls/web.key"
    assert (web.login_attempts, web.login_window_s, web.session_lifetime_s) == (5, 300.0, 28800.0)


def test_no_web_section_means_no_screen(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text('[store]\npath = "gw.db"\n')
    assert "web" not in read_gateway_file(p)
    assert not WebConfig().enabled


@pytest.mark.parametrize(("web", "key", "why"), [
    ('host = "0.0.0.0"', "web.cert_file", "needs TLS"),
    ('cert_file = "web.crt"', "web.cert_file", "go together"),
    ("port = 0", "web.port", ""),
    ("login_attempts = 0", "web.login_attempts", ""),
    ("session_lifetime_s = 1.0", "web.session_lifetime_s", ""),
    ('colour = "blue"', "web.colour", ""),
    ('enabled = "yes"', "web.enabled", ""),
])
def test_a_bad_web_setting_stops_the_gateway_naming_the_key(tmp_path: Path, web: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        read_gateway_file(_file(tmp_path, web))
    assert key in str(err.value) and why in str(err.value)


def test_run_check_shows_the_web_settings(tmp_path: Path) -> None:
    p = _file(tmp_path, 'enabled = true\nport = 9443')
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(p), "--check"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "web = WebConfig(enabled=True, host='127.0.0.1', port=9443" in r.stdout


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin, capture_output=True,
                          text=True, check=False)


class Cli:
    """``spd-gateway`` in this process (its ``main``), with standard input and the output captured."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys, self.monkeypatch = capsys, monkeypatch

    def __call__(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        from gateway.cli import main

        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(args))
        out = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsys, monkeypatch)


def test_accounts_are_made_with_hashed_passwords_and_every_change_is_audited(store_location: Path | str,
                                                                          cli: Cli) -> None:
    db = str(store_location)
    assert cli("user", "add", "li", "--db", db, "--role", "finance", "--password-stdin", stdin="short\n") \
        .returncode == 2
    ok = cli("user", "add", "li", "--db", db, "--role", "finance", "--password-stdin", "--by", "it",
              stdin="month end closing\n")
    assert ok.returncode == 0, ok.stderr
    assert cli("user", "add", "li", "--db", db, "--role", "inspector", "--password-stdin",
                stdin="another long one\n").returncode == 1
    assert cli("user", "passwd", "li", "--db", db, "--password-stdin", stdin="quarter end closing\n").returncode == 0
    assert cli("user", "disable", "li", "--db", db).returncode == 0
    assert cli("user", "passwd", "nobody", "--db", db, "--password-stdin", stdin="whatever long\n").returncode == 1
    assert "li\tfinance\tdisabled" in cli("user", "list", "--db", db).stdout
    store = GatewayStore(db)
    try:
        acc = store.accounts.account("li")
        assert acc is not None and acc.disabled and acc.password_hash.startswith("scrypt$")
        assert verify_password("quarter end closing", acc.password_hash)
        assert not verify_password("month end closing", acc.password_hash)
        changes = [(e.actor, json.loads(e.detail)["change"]) for e in store.audit.latest(limit=10)
                   if e.action == "web_account_changed"]
        assert [c for _, c in reversed(changes)] == ["added", "password changed", "disabled"]
        assert "quarter end closing" not in str(store._engine.query("SELECT * FROM web_accounts"))
    finally:
        store.close()


def test_an_api_token_is_shown_once_and_stored_as_a_hash(store_location: Path | str, cli: Cli) -> None:
    db = str(store_location)
    r = cli("web-token", "create", "--db", db, "--role", "inspector", "--name", "his-dashboard")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("spd_his-dashboard_") and len(token) > 50
    assert cli("web-token", "create", "--db", db, "--role", "finance", "--name", "his-dashboard").returncode == 1
    assert cli("web-token", "create", "--db", db, "--name", "x").returncode == 2
    store = GatewayStore(db)
    try:
        row = store.accounts.token(secret_hash(token))
        assert row is not None and row.role == "inspector"
        assert token not in str(store._engine.query("SELECT * FROM web_api_tokens"))
    finally:
        store.close()
    assert cli("web-token", "revoke", "--db", db, "--name", "his-dashboard").returncode == 0
    assert "revoked" in cli("web-token", "list", "--db", db).stdout


def test_web_cert_issues_a_server_certificate_from_the_site_ca(tmp_path: Path, cli: Cli) -> None:
    from cryptography import x509

    assert cli("ca-init", "--ca-dir", str(tmp_path / "ca"), "--site", "H1").returncode == 0
    r = cli("web-cert", "--ca-dir", str(tmp_path / "ca"), "--out-dir", str(tmp_path / "tls"), "--name",
             "spd-gw.hospital.local", "--dns", "spd-gw.hospital.local", "--ip", "10.0.0.5")
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificates((tmp_path / "tls" / "web.crt").read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["spd-gw.hospital.local"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert (tmp_path / "tls" / "web.key").stat().st_mode & 0o077 == 0


def test_spd_gateway_web_serves_the_screen_from_the_gateway_file(tmp_path: Path) -> None:
    from hw_sim.broker import free_port

    port = free_port()
    conf = _file(tmp_path, f'port = {port}')
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "web", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        from conftest import wait_for

        def login_page() -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code
            except httpx.HTTPError:
                return 0

        assert wait_for(login_page, timeout=20, interval=0.2, message="spd-gateway web listening") == 200
        r = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
        assert (tmp_path / "gw.db").exists()  # the store named by [store] path
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


def test_spd_gateway_web_refuses_a_public_address_without_tls(tmp_path: Path, cli: Cli) -> None:
    r = cli("web", "--config", str(_file(tmp_path, "")), "--host", "0.0.0.0")
    assert r.returncode == 2 and "needs TLS" in r.stderr


def test_spd_gateway_web_alone_sends_a_supervisors_unlock_through_its_own_fleet_connection(
        tmp_path: Path, broker: Any) -> None:
    import httpx
    import paho.mqtt.client as mqtt

    from gateway.commands import generate_signing_key
    from hw_sim.broker import free_port

    from conftest import wait_for
    from web_helpers import CABINET, add_accounts, add_cabinet_events

    store = GatewayStore(tmp_path / "gw.db")
    tokens = add_accounts(store)
    add_cabinet_events(store, tmp_path)
    store.close()
    generate_signing_key(tmp_path / "signing.key")
    port = free_port()
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[store]\npath = "gw.db"\n[broker]\nport = {broker.port}\n[fleet]\nsigning_key = "signing.key"\n'
                    f"[web]\nport = {port}\n", encoding="utf-8")
    commands: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")
    sub.on_message = lambda c, u, m: commands.append(m.payload)
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(f"spd/v1/H1/{CABINET}/cmd", qos=1)
    sub.loop_start()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "web", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/cabinets/{CABINET}/unlock"

        def listening() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(listening, timeout=20, interval=0.2, message="spd-gateway web listening")
        refused = httpx.post(url, json={"confirm": CABINET},
                             headers={"Authorization": f"Bearer {tokens[Role.TECHNICIAN]}"})
        assert refused.status_code == 403
        r = httpx.post(url, json={"confirm": CABINET, "seconds": 4},
                       headers={"Authorization": f"Bearer {tokens[Role.SUPERVISOR]}"}, timeout=20)
        assert r.status_code == 200, r.text
        wait_for(lambda: commands, timeout=10, message="the unlock on the cabinet's command topic")
        cmd = json.loads(commands[0])
        assert (cmd["kind"], cmd["by"], cmd["args"], cmd["seq"]) == ("unlock", "api:token:supervisor-tool",
                                                                      {"seconds": 4}, r.json()["command_seq"])
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
        sub.loop_stop()
        sub.disconnect()
