"""The gateway configuration file: strict parsing, secrets from files or the environment, flags over the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.config import config_from_args, read_gateway_file
from spd_common.mqtt import TlsSettings
from spd_common.toml_config import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "gateway.toml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(text, encoding="utf-8")
    return p


def _config(*argv: str) -> object:
    return config_from_args(build_parser().parse_args(["run", *argv]))


def test_the_example_file_is_the_installed_layout() -> None:
    fields = read_gateway_file(EXAMPLE)
    etc = EXAMPLE.parent
    assert fields["db_path"] == Path("/var/lib/spd-gateway/gateway.db")
    assert fields["tls"] == TlsSettings(str(etc / "tls/ca.crt"), str(etc / "tls/gateway.crt"),
                                        str(etc / "tls/gateway.key"))
    assert fields["broker_port"] == 8883 and fields["client_id"] == "spd-gateway"
    assert fields["his_protocol"] == "mllp" and fields["his_lanes"] == 4
    assert fields["signing_key"] == etc / "command-signing.key"
    assert fields["fleet_tls"] == TlsSettings(str(etc / "tls/ca.crt"), str(etc / "tls/gateway-fleet.crt"),
                                              str(etc / "tls/gateway-fleet.key"))
    assert fields["adt_host"] == "127.0.0.1" and "adt_port" not in fields
    assert fields["discharge_grace_s"] == 86400.0


def test_every_section_reaches_the_gateway_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    os.chmod(tmp_path / "token", 0o640)
    p = _write(tmp_path, """
[store]
path = "gw.db"
[broker]
host = "mq.hospital.local"
client_id = "gw-2"
share_group = "spd-gateways"
[broker.tls]
ca_file = "ca.crt"
cert_file = "gw.crt"
key_file = "gw.key"
[his]
protocol = "http"
url = "https://his.hospital.local/api/"
token_file = "token"
lanes = 8
timeout_s = 12.5
backoff_max_s = 60
facility = "H1"
sending_facility = "SPD2"
[lease]
ttl_s = 9
[fleet]
signing_key = "/etc/spd-gateway/command-signing.key"
[adt]
host = "0.0.0.0"
port = 2576
discharge_grace_s = 3600
""")
    cfg = _config("--config", str(p))
    assert cfg == type(cfg)(  # type: ignore[call-arg]
        db_path=tmp_path / "gw.db", broker_host="mq.hospital.local", broker_port=8883, client_id="gw-2",
        share_group="spd-gateways", his_protocol="http", his_url="https://his.hospital.local/api/",
        his_token="s3cret", his_lanes=8, his_timeout_s=12.5, his_backoff_max_s=60.0, lease_ttl_s=9.0,
        facility="H1", sending_facility="SPD2",
        tls=TlsSettings(str(tmp_path / "ca.crt"), str(tmp_path / "gw.crt"), str(tmp_path / "gw.key")),
        signing_key=Path("/etc/spd-gateway/command-signing.key"), adt_host="0.0.0.0", adt_port=2576,
        discharge_grace_s=3600.0,
    )


def test_flags_override_the_file_key_by_key(tmp_path: Path) -> None:
    p = _write(tmp_path, '[store]\npath = "gw.db"\n[his]\nhost = "his-a"\nport = 2575\nlanes = 2\n')
    cfg = _config("--config", str(p), "--his-port", "2600", "--his-lanes", "3", "--adt-port", "2576")
    assert (cfg.his_host, cfg.his_port, cfg.his_lanes, cfg.adt_port) == ("his-a", 2600, 3, 2576)  # type: ignore[attr-defined]
    assert cfg.db_path == tmp_path / "gw.db"  # type: ignore[attr-defined]
    assert _config("--config", str(p), "--db", "/srv/other.db").db_path == Path("/srv/other.db")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[store]\npath = "g.db"\ncolour = "red"\n', "store.colour", "unknown option"),
    ('[store]\npath = "g.db"\n[hiss]\nport = 1\n', "hiss", "unknown option"),
    ('[store]\npath = "g.db"\n[his]\nport = "2575"\n', "his.port", "must be an integer"),
    ('[store]\npath = "g.db"\n[his]\nlanes = 0\n', "his.lanes", "out of range"),
    ('[store]\npath = "g.db"\n[his]\nprotocol = "soap"\n', "his.protocol", "is not one of"),
    ('[store]\npath = "g.db"\n[his]\nurl = "https://x/"\n', "his.url", 'only with protocol = "http"'),
    ('[store]\npath = "g.db"\n[his]\nprotocol = "http"\n', "his.url", "is required"),
    ('[store]\npath = "g.db"\n[his]\nprotocol = "http"\nurl = "https://x/"\nport = 1\n', "his.port", "only with"),
    ('[store]\npath = "g.db"\n[his]\nprotocol = "http"\nurl = "ftp://x/"\n', "his.url", "not an http"),
    ('[store]\npath = "g.db"\n[his]\ntoken = "abc"\n', "his.token", "unknown option"),
    ('[store]\npath = "g.db"\n[his]\nprotocol = "http"\nurl = "https://x/"\ntoken = "abc"\n', "his.token",
     "unknown option"),
    ('[store]\npath = "g.db"\n[broker.tls]\nca_file = "ca"\n', "broker.tls.cert_file", "is required"),
    ('[store]\npath = "g.db"\n[broker]\nshare_group = "a/#"\n', "broker.share_group", "does not match"),
    ('[store]\npath = "g.db"\n[adt]\nport = 70000\n', "adt.port", "out of range"),
    ('[broker]\nport = 1883\n', "store.path", "is required"),
    ('[store\npath = "g.db"\n', "(syntax)", ""),
])
def test_a_bad_file_is_refused_naming_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        _config("--config", str(p))
    assert e.value.key == key
    assert reason in str(e.value)
    assert str(p) in str(e.value) or key == "store.path"


def test_the_token_comes_from_a_private_file_or_the_environment(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = '[store]\npath = "g.db"\n[his]\nprotocol = "http"\nurl = "https://his/"\n'
    tok = tmp_path / "token"
    tok.write_text("abc\n")
    os.chmod(tok, 0o644)
    with pytest.raises(ConfigError, match="readable by every user"):
        _config("--config", str(_write(tmp_path, base + 'token_file = "token"\n')))
    os.chmod(tok, 0o600)
    assert _config("--config", str(tmp_path / "gateway.toml")).his_token == "abc"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="not found"):
        _config("--config", str(_write(tmp_path, base + 'token_file = "nope"\n')))
    p = _write(tmp_path, base + 'token_env = "HIS_TOKEN"\n')
    monkeypatch.delenv("HIS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="HIS_TOKEN is not set"):
        _config("--config", str(p))
    monkeypatch.setenv("HIS_TOKEN", "from-env")
    assert _config("--config", str(p)).his_token == "from-env"  # type: ignore[attr-defined]
    monkeypatch.setenv("SPD_HIS_TOKEN", "default-env")  # neither key: the documented default variable
    assert _config("--config", str(_write(tmp_path, base))).his_token == "default-env"  # type: ignore[attr-defined]
    assert _config("--config", str(p), "--his-token-file", str(tok)).his_token == "abc"  # type: ignore[attr-defined]


def test_tls_flags_go_together() -> None:
    with pytest.raises(ConfigError, match="all three"):
        _config("--db", "g.db", "--tls-ca", "ca.crt")


def test_check_prints_the_effective_settings_without_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPD_HIS_TOKEN", "hunter2")
    p = _write(tmp_path, '[store]\npath = "g.db"\n[his]\nprotocol = "http"\nurl = "https://his/"\n')
    assert main(["run", "--config", str(p), "--check", "--his-lanes", "2"]) == 0
    out = capsys.readouterr().out
    assert "his_lanes = 2" in out and "his_token = (set)" in out and "hunter2" not in out
    assert not (tmp_path / "g.db").exists()  # a check opens nothing


def test_a_configuration_error_stops_run_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, '[store]\npath = "g.db"\n[his]\ncolour = 1\n')
    assert main(["run", "--config", str(p)]) == 2
    assert f"configuration error: {p}: his.colour: unknown option" in capsys.readouterr().err


def test_run_refuses_key_and_certificate_files_it_cannot_read(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, '[store]\npath = "g.db"\n[fleet]\nsigning_key = "missing.key"\n')
    assert main(["run", "--config", str(p), "--check"]) == 2
    assert f"{p}: fleet.signing_key: {tmp_path / 'missing.key'} cannot be read" in capsys.readouterr().err
    (tmp_path / "not-a-key").write_text("hello")
    assert main(["run", "--config", str(p), "--signing-key", str(tmp_path / "not-a-key"), "--check"]) == 2
    assert "fleet.signing_key" in capsys.readouterr().err
    p = _write(tmp_path, '[store]\npath = "g.db"\n[broker.tls]\nca_file = "ca"\ncert_file = "c"\nkey_file = "k"\n')
    assert main(["run", "--config", str(p)]) == 2
    assert "broker.tls.ca_file" in capsys.readouterr().err
    assert not (tmp_path / "g.db").exists()


def test_service_is_run() -> None:
    a = build_parser().parse_args(["service", "--config", "/etc/spd-gateway/gateway.toml"])
    b = build_parser().parse_args(["run", "--config", "/etc/spd-gateway/gateway.toml"])
    assert a.func is b.func and vars(a) | {"cmd": "run"} == vars(b)


def test_the_systemd_unit_runs_the_tested_command() -> None:
    unit = (EXAMPLE.parent.parent / "systemd" / "spd-gateway.service").read_text()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=/opt/spd-edge/venv/bin/spd-gateway run --config /etc/spd-gateway/gateway.toml"]


def test_the_fleet_link_has_its_own_certificate_over_tls(tmp_path: Path) -> None:
    from gateway.config import check_files

    tls = '[broker.tls]\nca_file = "ca.crt"\ncert_file = "gw.crt"\nkey_file = "gw.key"\n'
    for name in ("ca.crt", "gw.crt", "gw.key", "fl.crt", "fl.key"):
        (tmp_path / name).write_text("x")
    p = _write(tmp_path, '[store]\npath = "gw.db"\n' + tls)
    cfg = _config("--config", str(p), "--fleet-tls-cert", str(tmp_path / "fl.crt"),
                  "--fleet-tls-key", str(tmp_path / "fl.key"))
    assert cfg.fleet_tls == TlsSettings(str(tmp_path / "ca.crt"), str(tmp_path / "fl.crt"),  # type: ignore[attr-defined]
                                        str(tmp_path / "fl.key"))
    with pytest.raises(ConfigError, match="--fleet-tls-cert/--fleet-tls-key"):
        _config("--config", str(p), "--fleet-tls-cert", str(tmp_path / "fl.crt"))
    with pytest.raises(ConfigError, match=r"fleet\.cert_file.*\[broker\.tls\]"):
        bad = tmp_path / "no-tls.toml"
        bad.write_text('[fleet]\nsigning_key = "k"\ncert_file = "fl.crt"\nkey_file = "fl.key"\n', encoding="utf-8")
        read_gateway_file(bad)
    # a TLS gateway with a signing key and no fleet certificate is told so at start-up, naming the key
    (tmp_path / "k").write_text("x")
    cfg = _config("--config", str(p), "--signing-key", str(tmp_path / "k"))
    with pytest.raises(ConfigError, match=r"fleet\.cert_file"):
        check_files(cfg, source=str(p))  # type: ignore[arg-type]


def test_the_systemd_part_units_run_the_tested_command_and_exclude_the_one_process_unit() -> None:
    unit = (EXAMPLE.parent.parent / "systemd" / "spd-gateway@.service").read_text()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=/opt/spd-edge/venv/bin/spd-gateway run --config /etc/spd-gateway/gateway.toml "
                          "--part %i"]
    assert "Conflicts=spd-gateway.service" in unit.splitlines()
    one = (EXAMPLE.parent.parent / "systemd" / "spd-gateway.service").read_text()
    # the rest of the unit (sandbox, watchdog, user) is the one-process unit's
    assert [x for x in one.splitlines() if not x.startswith(("#", "Description=", "ExecStart="))] == \
        [x for x in unit.splitlines() if not x.startswith(("#", "Description=", "ExecStart=", "Conflicts="))]
    args = build_parser().parse_args(["run", "--config", "/etc/spd-gateway/gateway.toml", "--part", "his"])
    assert args.part == "his"
