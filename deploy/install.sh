#!/usr/bin/env bash
# Install spd-edge on Raspberry Pi OS / Debian: service user, directories, packages, venv, systemd units.
#
#   sudo deploy/install.sh --role device            a cabinet controller
#   sudo deploy/install.sh --role device --kind handheld   a nurse's scanning station (screen on tty1)
#   sudo deploy/install.sh --role device --extras camera,wedge   ... with a camera / keyboard-wedge scanner
#   sudo deploy/install.sh --role gateway --site H1 the hospital gateway (with its Mosquitto)
#   sudo deploy/install.sh --role gateway --site H1 --parts   ... as three processes, one per part
#                                                   (spd-gateway@ingest, @books, @his; docs/scale.md)
#
# Safe to run again (upgrades the venv, keeps configuration, keys and data).
set -euo pipefail

ROLE=""
SITE=""
KIND=cabinet
EXTRAS=""
PARTS=0
PREFIX=/opt/spd-edge
SRC="$(cd "$(dirname "$0")/.." && pwd)"

while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE="$2"; shift 2 ;;
        --site) SITE="$2"; shift 2 ;;
        --kind) KIND="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --extras) EXTRAS="$2"; shift 2 ;;
        --parts) PARTS=1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$ROLE" = device ] || [ "$ROLE" = gateway ] || { echo "usage: $0 --role device|gateway [--site ID]" >&2; exit 2; }
[ "$KIND" = cabinet ] || [ "$KIND" = handheld ] || { echo "--kind is cabinet or handheld" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 2; }

log() { printf '== %s\n' "$*"; }

log "Debian packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
PKGS="python3 python3-venv python3-dev build-essential sqlite3 ca-certificates"
if [ "$ROLE" = device ]; then
    PKGS="$PKGS libzbar0"
    if [ "$KIND" = handheld ]; then PKGS="$PKGS kbd console-setup"; fi  # setfont and the Terminus console fonts
    if grep -qi raspberry /proc/device-tree/model 2>/dev/null; then PKGS="$PKGS python3-rpi.gpio"; fi
else
    PKGS="$PKGS mosquitto"
fi
# shellcheck disable=SC2086
apt-get install -y -q $PKGS

log "virtualenv in $PREFIX/venv"
install -d -m 0755 "$PREFIX"
rm -rf "$PREFIX/src" && cp -a "$SRC" "$PREFIX/src" && rm -rf "$PREFIX/src/.venv" "$PREFIX/src/.git"
[ -x "$PREFIX/venv/bin/python" ] || python3 -m venv --system-site-packages "$PREFIX/venv"
# the tested versions (constraints.txt); a cabinet gets the device agent's dependencies only,
# the gateway its extra and the compiled charging bridge, required (docs/deploy.md, "What each host installs")
PIP=("$PREFIX/venv/bin/pip" install -q -c "$PREFIX/src/constraints.txt")
"${PIP[@]}" --upgrade pip setuptools wheel Cython
if [ "$ROLE" = device ]; then
    SPD_NO_EXTENSIONS=1 "${PIP[@]}" --no-build-isolation "$PREFIX/src${EXTRAS:+[$EXTRAS]}"
else
    SPD_REQUIRE_COMPILED=1 "${PIP[@]}" --no-build-isolation "$PREFIX/src[gateway${EXTRAS:+,$EXTRAS}]"
fi

if [ "$ROLE" = device ]; then
    log "user spd and directories"
    getent group gpio >/dev/null || groupadd --system gpio
    id spd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/spd-device --shell /usr/sbin/nologin spd
    getent group input >/dev/null || groupadd --system input
    usermod -a -G dialout,gpio,input spd
    getent group video >/dev/null && usermod -a -G video spd
    install -d -m 0750 -o root -g spd /etc/spd-device
    install -d -m 0750 -o spd -g spd /var/lib/spd-device
    install -d -m 0750 -o root -g adm /var/log/spd
    log "udev rules, logrotate, unit"
    install -m 0644 "$SRC/deploy/udev/99-spd-readers.rules" /etc/udev/rules.d/99-spd-readers.rules
    udevadm control --reload || true
    install -m 0644 "$SRC/deploy/logrotate/spd" /etc/logrotate.d/spd
    install -m 0644 "$SRC/deploy/systemd/spd-device.service" /etc/systemd/system/spd-device.service
    if [ "$KIND" = handheld ]; then
        install -d -m 0755 /etc/systemd/system/spd-device.service.d
        install -m 0644 "$SRC/deploy/systemd/spd-device.service.d/handheld-screen.conf" \
            /etc/systemd/system/spd-device.service.d/handheld-screen.conf
        systemctl disable getty@tty1.service || true
    fi
    systemctl daemon-reload
    systemctl enable spd-device.service
    log "done. Next: provision the device (docs/deploy.md, step 3), then: systemctl start spd-device"
    exit 0
fi

[ -n "$SITE" ] || { echo "--site is required for the gateway" >&2; exit 2; }
GW=/etc/spd-gateway
BIN="$PREFIX/venv/bin/spd-gateway"
log "user spd-gateway and directories"
id spd-gateway >/dev/null 2>&1 || useradd --system --home-dir /var/lib/spd-gateway --shell /usr/sbin/nologin spd-gateway
install -d -m 0750 -o root -g spd-gateway "$GW" "$GW/tls"
install -d -m 0700 -o spd-gateway -g spd-gateway "$GW/ca"
install -d -m 0750 -o spd-gateway -g spd-gateway /var/lib/spd-gateway
install -d -m 0750 -o root -g adm /var/log/spd
install -d -m 0750 -o root -g mosquitto /etc/mosquitto/spd

if [ ! -f "$GW/ca/ca.key" ]; then
    log "site CA for $SITE"
    runuser -u spd-gateway -- "$BIN" ca-init --ca-dir "$GW/ca" --site "$SITE"
fi
[ -f "$GW/command-signing.key" ] || { "$BIN" signing-key --out "$GW/command-signing.key" >/dev/null;
    chown spd-gateway:spd-gateway "$GW/command-signing.key"; }

log "broker and gateway certificates"
HOST="$(hostname -f 2>/dev/null || hostname)"
"$PREFIX/venv/bin/python" - "$GW" "$HOST" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from gateway.broker_acl import GATEWAY_CLI_IDENTITY, fleet_identity
from gateway.pki import GATEWAY_IDENTITY, CertRole, SiteCA, write_private_key
gw, host = Path(sys.argv[1]), sys.argv[2]
ca = SiteCA.load(gw / "ca")
pem = serialization.Encoding.PEM
# one certificate per gateway connection: the broker makes the client id the certificate's CN
for stem, name in (("gateway", GATEWAY_IDENTITY), ("gateway-fleet", fleet_identity(GATEWAY_IDENTITY)),
                   ("gateway-cli", GATEWAY_CLI_IDENTITY)):
    if not (gw / "tls" / f"{stem}.crt").exists():
        key, cert = ca.issue_with_new_key(name, role=CertRole.GATEWAY)
        write_private_key(gw / "tls" / f"{stem}.key", key)
        (gw / "tls" / f"{stem}.crt").write_bytes(cert.public_bytes(pem))
if not Path("/etc/mosquitto/spd/broker.crt").exists():
    key, cert = ca.issue_with_new_key("spd-broker", role=CertRole.SERVER, dns_names=(host, "localhost"),
                                      ip_addresses=("127.0.0.1",))
    write_private_key(Path("/etc/mosquitto/spd/broker.key"), key)
    Path("/etc/mosquitto/spd/broker.crt").write_bytes(cert.public_bytes(pem))
(gw / "tls" / "ca.crt").write_bytes(ca.cert_pem)
PY
chown -R spd-gateway:spd-gateway "$GW/ca" "$GW/tls"
chmod 0600 "$GW/tls/gateway.key" "$GW/tls/gateway-fleet.key" "$GW/tls/gateway-cli.key"
install -m 0644 "$GW/ca/ca.crt" /etc/mosquitto/spd/ca.crt
install -m 0644 "$GW/ca/crl.pem" /etc/mosquitto/spd/crl.pem
chown mosquitto:mosquitto /etc/mosquitto/spd/broker.key && chmod 0600 /etc/mosquitto/spd/broker.key

log "Mosquitto: TLS listener on 8883 and the ACL for $SITE"
"$BIN" broker-acl --site "$SITE" --out /etc/mosquitto/spd/acl
"$BIN" broker-config --template "$SRC/deploy/mosquitto/spd.conf.template" --port 8883 \
    --ca-file /etc/mosquitto/spd/ca.crt --cert-file /etc/mosquitto/spd/broker.crt \
    --key-file /etc/mosquitto/spd/broker.key --crl-file /etc/mosquitto/spd/crl.pem \
    --acl-file /etc/mosquitto/spd/acl --persistence-dir /var/lib/mosquitto > /etc/mosquitto/conf.d/spd.conf
# the template sets global options; the Debian default mosquitto.conf must not repeat them
sed -i -e 's/^\(persistence \|persistence_location\|log_dest\)/#&/' /etc/mosquitto/mosquitto.conf

if [ ! -f "$GW/gateway.toml" ]; then
    # the gateway's configuration (docs/deploy.md); edit the [his] section, then restart spd-gateway
    install -m 0640 -g spd-gateway "$SRC/deploy/examples/gateway.toml" "$GW/gateway.toml"
fi
if [ ! -f "$GW/gateway.env" ]; then
    # for spd-enrol.service only
    cat > "$GW/gateway.env" <<ENV
SPD_BROKER_HOST=127.0.0.1
SPD_BROKER_PORT=8883
SPD_ENROL_BIND=0.0.0.0
SPD_ENROL_PORT=8443
ENV
    chmod 0640 "$GW/gateway.env" && chgrp spd-gateway "$GW/gateway.env"
fi
runuser -u spd-gateway -- "$BIN" run --config "$GW/gateway.toml" --check >/dev/null

log "units and logrotate"
install -m 0644 "$SRC/deploy/logrotate/spd" /etc/logrotate.d/spd
for unit in spd-gateway.service spd-gateway@.service spd-enrol.service; do
    install -m 0644 "$SRC/deploy/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl restart mosquitto
GATEWAY_PARTS=(spd-gateway@ingest.service spd-gateway@books.service spd-gateway@his.service)
if [ "$PARTS" = 1 ]; then  # one gateway, three processes; the one-process unit is stopped (Conflicts=)
    systemctl disable --now spd-gateway.service 2>/dev/null || true
    systemctl enable --now "${GATEWAY_PARTS[@]}"
else
    systemctl disable --now "${GATEWAY_PARTS[@]}" 2>/dev/null || true
    systemctl enable --now spd-gateway.service
fi
log "done. CA fingerprint (give it to technicians with each token):"
runuser -u spd-gateway -- "$PREFIX/venv/bin/python" -c \
    "from gateway.pki import SiteCA; print(SiteCA.load('$GW/ca').fingerprint)"
