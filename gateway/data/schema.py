"""The gateway store's schema as numbered migrations, oldest first (see docs/data.md).

A migration is applied once, in one transaction, and its number recorded in ``schema_migrations``. Never
edit a migration that has shipped: add the next one. Each migration holds its SQL per engine
(:class:`Sql`); :class:`AddColumns` is the one schema step that looks at what exists, kept for the stores
made before the schema had a version (see :mod:`gateway.data.migrations`).

``0001_initial`` to ``0004_audit_chain`` are the schema as the release before versioning created it on a
fresh store, statement for statement (the text SQLite keeps in ``sqlite_master`` is the same), split where
that release grew it: 0002 to 0004 are the places where it added columns after looking at which existed.
Each has its PostgreSQL form beside it; :class:`AddColumns` types are SQLite's, and the engine names them in
its own (``REAL`` → ``DOUBLE PRECISION``).
"""

from __future__ import annotations

from gateway.data.engine import statements
from gateway.data.migrations import AddColumns, Migration, Sql

_EVENTS_AND_CHARGES = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    stored_at REAL NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
CREATE TABLE IF NOT EXISTS quarantine (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw TEXT NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS bad_payloads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    contiguous_seq INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    status TEXT NOT NULL DEFAULT 'unknown',
    backlog INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS chain_breaks (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    detail TEXT NOT NULL,
    detected_at REAL NOT NULL,
    PRIMARY KEY (device, seq, detail)
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    gtin TEXT PRIMARY KEY,
    item_code TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL DEFAULT '',
    manufacturer TEXT NOT NULL DEFAULT '',
    price_fen INTEGER NOT NULL CHECK (price_fen >= 0),
    chargeable INTEGER NOT NULL DEFAULT 1,
    high_value INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    admission TEXT NOT NULL,
    item_key TEXT NOT NULL,
    line TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    ack_code TEXT,
    his_ref TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS charges_status ON charges (status, id);
CREATE UNIQUE INDEX IF NOT EXISTS charges_item_once ON charges (item_key) WHERE status != 'parked';
CREATE INDEX IF NOT EXISTS charges_item ON charges (item_key);
CREATE TABLE IF NOT EXISTS charge_rejects (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS consumption (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    charge_id TEXT,
    admission TEXT NOT NULL,
    gtin TEXT NOT NULL,
    item_code TEXT NOT NULL,
    name TEXT NOT NULL,
    lot TEXT NOT NULL,
    serial TEXT NOT NULL,
    expiry TEXT NOT NULL,
    price_fen INTEGER NOT NULL,
    operator TEXT NOT NULL,
    dept TEXT NOT NULL,
    used_at_ms INTEGER NOT NULL,
    his_ref TEXT,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
"""

_CATALOG = (
    "CREATE TABLE IF NOT EXISTS catalog_terms (gtin TEXT PRIMARY KEY, supplier TEXT NOT NULL DEFAULT '', "
    "vbp INTEGER NOT NULL DEFAULT 0, vbp_price_fen INTEGER CHECK (vbp_price_fen >= 0))",
    "CREATE TABLE IF NOT EXISTS recalled_lots (gtin TEXT NOT NULL, lot TEXT NOT NULL, reason TEXT NOT NULL "
    "DEFAULT '', recalled_on TEXT NOT NULL DEFAULT '', PRIMARY KEY (gtin, lot))",
    "CREATE TABLE IF NOT EXISTS dept_stock (dept TEXT NOT NULL, gtin TEXT NOT NULL, PRIMARY KEY (dept, gtin))",
    "CREATE TABLE IF NOT EXISTS patient_census (admission TEXT PRIMARY KEY, status TEXT NOT NULL "
    "CHECK (status IN ('in_house', 'discharged')), updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS device_catalog_versions (dept TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "digest TEXT NOT NULL, changed_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lot_expiry (gtin TEXT NOT NULL, lot TEXT NOT NULL, expiry TEXT NOT NULL, "
    "PRIMARY KEY (gtin, lot))",
)

_AUDIT = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{}',
    prev TEXT,
    hash TEXT
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""

_LINK_WATCH = """
CREATE TABLE IF NOT EXISTS cabinet_takes (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_key TEXT NOT NULL,
    epc TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT '',
    session TEXT NOT NULL DEFAULT '',
    dept TEXT NOT NULL DEFAULT '',
    taken_ms INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    closed_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS cabinet_takes_item ON cabinet_takes (item_key, state);
CREATE INDEX IF NOT EXISTS cabinet_takes_open ON cabinet_takes (state, stored_at);
CREATE TABLE IF NOT EXISTS item_scans (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_key TEXT NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS item_scans_item ON item_scans (item_key, stored_at);
CREATE TABLE IF NOT EXISTS link_alarms (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_key TEXT NOT NULL,
    epc TEXT NOT NULL,
    user TEXT NOT NULL,
    session TEXT NOT NULL,
    dept TEXT NOT NULL,
    taken_ms INTEGER NOT NULL,
    window_s REAL NOT NULL,
    raised_at REAL NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolved_at REAL,
    PRIMARY KEY (device, seq)
);
"""

_FLEET = (
    "CREATE TABLE IF NOT EXISTS fleet_desired (device TEXT NOT NULL, site TEXT NOT NULL, component TEXT NOT NULL, "
    "version INTEGER NOT NULL, doc TEXT NOT NULL, pushed_at REAL NOT NULL, pushed_by TEXT NOT NULL, "
    "PRIMARY KEY (device, component))",
    "CREATE TABLE IF NOT EXISTS fleet_applied (device TEXT PRIMARY KEY, applied TEXT NOT NULL, reported_at REAL "
    "NOT NULL)",
    "CREATE TABLE IF NOT EXISTS command_seq (device TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS staff (staff_id TEXT PRIMARY KEY, badge TEXT NOT NULL UNIQUE, role TEXT NOT NULL, "
    "depts TEXT NOT NULL, pin_hash TEXT, imported_at REAL NOT NULL)",
)

_RETURNS = """
CREATE TABLE IF NOT EXISTS returns (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_key TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    restocked INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    charge_id TEXT,
    credit_id TEXT UNIQUE,
    operator TEXT NOT NULL,
    dept TEXT NOT NULL,
    returned_at_ms INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS returns_charge_once ON returns (charge_id) WHERE outcome IN ('credited', 'voided');
CREATE TABLE IF NOT EXISTS item_releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_key TEXT NOT NULL,
    credit_id TEXT NOT NULL UNIQUE,
    released_at REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS consumption_ledger AS
    SELECT device, seq, 'charge' AS entry, charge_id, admission, gtin, item_code, name, lot, serial,
           price_fen AS amount_fen, operator, dept, used_at_ms AS at_ms, his_ref
    FROM consumption
    UNION ALL
    SELECT r.device, r.seq, 'credit', c.credit_id, c.admission, c.gtin, c.item_code, c.name, c.lot, c.serial,
           -c.price_fen, r.operator, r.dept, r.returned_at_ms, c.credit_his_ref
    FROM consumption c JOIN returns r ON r.credit_id = c.credit_id;
"""

_CENSUS = (
    "CREATE TABLE IF NOT EXISTS adt_messages (control_id TEXT PRIMARY KEY, received_at REAL NOT NULL, "
    "event TEXT NOT NULL, admission TEXT NOT NULL, outcome TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS census_state (id INTEGER PRIMARY KEY CHECK (id = 1), complete INTEGER NOT NULL, "
    "changed_at REAL NOT NULL, changed_by TEXT NOT NULL)",
)

_SUPPLY_TERMS = """
CREATE TABLE IF NOT EXISTS suppliers (
    supplier TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    licence_no TEXT NOT NULL DEFAULT '',
    licence_expiry TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS contracts (
    supplier TEXT NOT NULL,
    gtin TEXT NOT NULL,
    purchase_price_fen INTEGER NOT NULL CHECK (purchase_price_fen >= 0),
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL DEFAULT '9999-12-31',
    contract_no TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (supplier, gtin, valid_from)
);
CREATE INDEX IF NOT EXISTS contracts_gtin ON contracts (gtin, valid_from);
CREATE TABLE IF NOT EXISTS registrations (
    gtin TEXT NOT NULL,
    cert_no TEXT NOT NULL,
    expiry TEXT NOT NULL,
    PRIMARY KEY (gtin, cert_no)
);
CREATE TABLE IF NOT EXISTS vbp_categories (
    category TEXT NOT NULL,
    year INTEGER NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    agreed_volume INTEGER NOT NULL CHECK (agreed_volume >= 0),
    PRIMARY KEY (category, year)
);
CREATE TABLE IF NOT EXISTS stock_movements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    location TEXT NOT NULL,
    dept TEXT NOT NULL DEFAULT '',
    gtin TEXT NOT NULL,
    lot TEXT NOT NULL DEFAULT '',
    serial TEXT NOT NULL DEFAULT '',
    qty INTEGER NOT NULL,
    operator TEXT NOT NULL DEFAULT '',
    admission TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, gtin, lot, serial, kind)
);
CREATE INDEX IF NOT EXISTS stock_movements_at ON stock_movements (at_ms);
CREATE INDEX IF NOT EXISTS stock_movements_item ON stock_movements (gtin, serial);
CREATE INDEX IF NOT EXISTS stock_movements_location ON stock_movements (location, gtin, lot);
CREATE TABLE IF NOT EXISTS vbp_items (
    gtin TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    winner INTEGER NOT NULL DEFAULT 0
);
"""

# incidents of the notification loop (gateway/notify.py) and the notices to send for them, per channel; an
# incident is open at most once per (kind, subject): the partial unique index, on both engines
_INCIDENTS_SQLITE = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    summary TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    opened_at REAL NOT NULL,
    resolved_at REAL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolution TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open_once ON incidents (kind, subject) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS incidents_by_subject ON incidents (kind, subject, id);
CREATE TABLE IF NOT EXISTS incident_notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    event TEXT NOT NULL CHECK (event IN ('opened', 'resolved')),
    channel TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (incident_id, event, channel)
);
CREATE INDEX IF NOT EXISTS incident_notices_due ON incident_notices (channel, status, next_attempt_at);
"""

_INCIDENTS_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS incidents (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    summary TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    opened_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolution TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open_once ON incidents (kind, subject) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS incidents_by_subject ON incidents (kind, subject, id);
CREATE TABLE IF NOT EXISTS incident_notices (
    id BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    event TEXT NOT NULL CHECK (event IN ('opened', 'resolved')),
    channel TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    sent_at DOUBLE PRECISION,
    UNIQUE (incident_id, event, channel)
);
CREATE INDEX IF NOT EXISTS incident_notices_due ON incident_notices (channel, status, next_attempt_at);
"""

_HIS_LINES = """
CREATE TABLE IF NOT EXISTS his_lines (
    his_id TEXT PRIMARY KEY,
    entry TEXT NOT NULL CHECK (entry IN ('charge', 'credit')),
    admission TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    gtin TEXT NOT NULL DEFAULT '',
    lot TEXT NOT NULL DEFAULT '',
    serial TEXT NOT NULL DEFAULT '',
    qty INTEGER NOT NULL,
    unit_price_fen INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('interface', 'manual')),
    reverses TEXT NOT NULL DEFAULT '',
    dept TEXT NOT NULL DEFAULT '',
    operator TEXT NOT NULL DEFAULT '',
    his_ref TEXT NOT NULL DEFAULT '',
    imported_from TEXT NOT NULL DEFAULT '',
    imported_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS his_lines_at ON his_lines (at_ms);
CREATE INDEX IF NOT EXISTS his_lines_reverses ON his_lines (reverses);
CREATE INDEX IF NOT EXISTS his_lines_code ON his_lines (charge_code, at_ms);
CREATE INDEX IF NOT EXISTS his_lines_gtin ON his_lines (gtin, at_ms);
CREATE INDEX IF NOT EXISTS consumption_charge ON consumption (charge_id);
CREATE INDEX IF NOT EXISTS consumption_gtin ON consumption (gtin, used_at_ms);
"""

# The supervisor's screen (gateway/web): local accounts, server-side sessions, API tokens for integrations and
# acknowledgements of alarms. Secrets are stored only as hashes (password: scrypt; session and token: SHA-256 of
# a random value). PostgreSQL gets the same text with DOUBLE PRECISION times. Two indexes serve the screen's
# reads over a month of data: charges by admission (the charges search), the consumption list by time with its
# department (the uses-per-day chart, read from the index alone).
_WEB_ACCESS = """
CREATE TABLE IF NOT EXISTS web_accounts (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS web_sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    csrf TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS web_sessions_user ON web_sessions (username);
CREATE TABLE IF NOT EXISTS web_api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS charges_admission ON charges (admission, id);
CREATE INDEX IF NOT EXISTS consumption_day_dept ON consumption (used_at_ms, dept);
CREATE TABLE IF NOT EXISTS alarm_acks (
    alarm TEXT PRIMARY KEY,
    acked_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    acked_at REAL NOT NULL
);
"""

_BOOKS_LEDGER = """
ALTER TABLE stock_movements ADD COLUMN counterpart TEXT NOT NULL DEFAULT '';
ALTER TABLE stock_movements ADD COLUMN expiry TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS stock_counts (
    count_id TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    counted_by TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT '',
    recorded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_count_lines (
    count_id TEXT NOT NULL,
    gtin TEXT NOT NULL,
    lot TEXT NOT NULL DEFAULT '',
    serial TEXT NOT NULL DEFAULT '',
    expected INTEGER NOT NULL,
    counted INTEGER NOT NULL,
    PRIMARY KEY (count_id, gtin, lot, serial)
);
CREATE TABLE IF NOT EXISTS par_levels (
    location TEXT NOT NULL,
    gtin TEXT NOT NULL,
    par INTEGER NOT NULL CHECK (par >= 0),
    PRIMARY KEY (location, gtin)
);
CREATE TABLE IF NOT EXISTS replenish_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    location TEXT NOT NULL,
    gtin TEXT NOT NULL,
    qty INTEGER NOT NULL CHECK (qty > 0),
    requested_by TEXT NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'open',
    closed_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS replenish_requests_open ON replenish_requests (state, location);
CREATE TABLE IF NOT EXISTS routes (
    route TEXT NOT NULL,
    location TEXT NOT NULL,
    stop INTEGER NOT NULL,
    PRIMARY KEY (route, location)
);
"""

# on hand per location and item, kept by a trigger on every movement inserted (a movement recorded again is
# not inserted, so it changes nothing): the books read it instead of summing every movement
_STOCK_BALANCES = """
CREATE TABLE IF NOT EXISTS stock_balances (
    location TEXT NOT NULL,
    gtin TEXT NOT NULL,
    serial TEXT NOT NULL,
    lot_key TEXT NOT NULL,
    lot TEXT NOT NULL,
    qty INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    expiry TEXT NOT NULL,
    PRIMARY KEY (location, gtin, serial, lot_key)
);
CREATE INDEX IF NOT EXISTS stock_balances_gtin ON stock_balances (gtin, lot);
"""
_BALANCE_UPSERT = ("ON CONFLICT (location, gtin, serial, lot_key) DO UPDATE SET qty = stock_balances.qty + "
                   "excluded.qty, lot = {max}(stock_balances.lot, excluded.lot), last_ms = {max}("
                   "stock_balances.last_ms, excluded.last_ms), expiry = {max}(stock_balances.expiry, excluded.expiry)")
_STOCK_BALANCES_SQLITE = f"""
CREATE TRIGGER IF NOT EXISTS stock_balances_in AFTER INSERT ON stock_movements
BEGIN
    INSERT INTO stock_balances (location, gtin, serial, lot_key, lot, qty, last_ms, expiry)
    SELECT NEW.location, NEW.gtin, NEW.serial, CASE WHEN NEW.serial = '' THEN NEW.lot ELSE '' END, NEW.lot,
           NEW.qty, NEW.at_ms, NEW.expiry WHERE true
    {_BALANCE_UPSERT.format(max="MAX")};
    INSERT INTO stock_balances (location, gtin, serial, lot_key, lot, qty, last_ms, expiry)
    SELECT NEW.counterpart, NEW.gtin, NEW.serial, CASE WHEN NEW.serial = '' THEN NEW.lot ELSE '' END, NEW.lot,
           -NEW.qty, NEW.at_ms, NEW.expiry WHERE NEW.counterpart != ''
    {_BALANCE_UPSERT.format(max="MAX")};
END;
"""
_STOCK_BALANCES_POSTGRESQL = (
    "CREATE OR REPLACE FUNCTION stock_balances_in() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO stock_balances (location, gtin, serial, lot_key, lot, qty, last_ms, expiry) "
    "SELECT NEW.location, NEW.gtin, NEW.serial, CASE WHEN NEW.serial = '' THEN NEW.lot ELSE '' END, NEW.lot, "
    f"NEW.qty, NEW.at_ms, NEW.expiry {_BALANCE_UPSERT.format(max='GREATEST')}; "
    "INSERT INTO stock_balances (location, gtin, serial, lot_key, lot, qty, last_ms, expiry) "
    "SELECT NEW.counterpart, NEW.gtin, NEW.serial, CASE WHEN NEW.serial = '' THEN NEW.lot ELSE '' END, NEW.lot, "
    f"-NEW.qty, NEW.at_ms, NEW.expiry WHERE NEW.counterpart != '' {_BALANCE_UPSERT.format(max='GREATEST')}; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER stock_balances_in AFTER INSERT ON stock_movements FOR EACH ROW "
    "EXECUTE FUNCTION stock_balances_in()",
)
# a store that already holds movements (migration 0005) starts with their balances
_STOCK_BALANCES_FILL = """
INSERT INTO stock_balances (location, gtin, serial, lot_key, lot, qty, last_ms, expiry)
SELECT location, gtin, serial, lot_key, MAX(lot), SUM(qty), MAX(at_ms), MAX(expiry) FROM (
    SELECT location, gtin, serial, CASE WHEN serial = '' THEN lot ELSE '' END AS lot_key, lot, qty, at_ms, expiry
    FROM stock_movements
    UNION ALL
    SELECT counterpart, gtin, serial, CASE WHEN serial = '' THEN lot ELSE '' END, lot, -qty, at_ms, expiry
    FROM stock_movements WHERE counterpart != ''
) AS sides GROUP BY location, gtin, serial, lot_key;
"""


# ------------------------------------------------------------ the same schema on PostgreSQL
# Statement for statement the SQLite schema above, in PostgreSQL's types: INTEGER → BIGINT (milliseconds and
# money in fen pass 2^31), REAL → DOUBLE PRECISION, BLOB → BYTEA, AUTOINCREMENT → an identity column; the
# column ``user`` quoted (a reserved word there); the audit log's triggers call a PL/pgSQL function.

_EVENTS_AND_CHARGES_PG = """CREATE TABLE IF NOT EXISTS events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    site TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
CREATE TABLE IF NOT EXISTS quarantine (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw TEXT NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS bad_payloads (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    contiguous_seq BIGINT NOT NULL DEFAULT 0,
    last_seen DOUBLE PRECISION,
    status TEXT NOT NULL DEFAULT 'unknown',
    backlog BIGINT NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS chain_breaks (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    detail TEXT NOT NULL,
    detected_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq, detail)
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    gtin TEXT PRIMARY KEY,
    item_code TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL DEFAULT '',
    manufacturer TEXT NOT NULL DEFAULT '',
    price_fen BIGINT NOT NULL CHECK (price_fen >= 0),
    chargeable BIGINT NOT NULL DEFAULT 1,
    high_value BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS charges (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    charge_id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    admission TEXT NOT NULL,
    item_key TEXT NOT NULL,
    line TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    ack_code TEXT,
    his_ref TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS charges_status ON charges (status, id);
CREATE UNIQUE INDEX IF NOT EXISTS charges_item_once ON charges (item_key) WHERE status != 'parked';
CREATE INDEX IF NOT EXISTS charges_item ON charges (item_key);
CREATE TABLE IF NOT EXISTS charge_rejects (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS consumption (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    charge_id TEXT,
    admission TEXT NOT NULL,
    gtin TEXT NOT NULL,
    item_code TEXT NOT NULL,
    name TEXT NOT NULL,
    lot TEXT NOT NULL,
    serial TEXT NOT NULL,
    expiry TEXT NOT NULL,
    price_fen BIGINT NOT NULL,
    operator TEXT NOT NULL,
    dept TEXT NOT NULL,
    used_at_ms BIGINT NOT NULL,
    his_ref TEXT,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq)
);
"""

_LINK_WATCH_PG = """CREATE TABLE IF NOT EXISTS cabinet_takes (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    item_key TEXT NOT NULL,
    epc TEXT NOT NULL DEFAULT '',
    "user" TEXT NOT NULL DEFAULT '',
    session TEXT NOT NULL DEFAULT '',
    dept TEXT NOT NULL DEFAULT '',
    taken_ms BIGINT NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    closed_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS cabinet_takes_item ON cabinet_takes (item_key, state);
CREATE INDEX IF NOT EXISTS cabinet_takes_open ON cabinet_takes (state, stored_at);
CREATE TABLE IF NOT EXISTS item_scans (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    item_key TEXT NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS item_scans_item ON item_scans (item_key, stored_at);
CREATE TABLE IF NOT EXISTS link_alarms (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    item_key TEXT NOT NULL,
    epc TEXT NOT NULL,
    "user" TEXT NOT NULL,
    session TEXT NOT NULL,
    dept TEXT NOT NULL,
    taken_ms BIGINT NOT NULL,
    window_s DOUBLE PRECISION NOT NULL,
    raised_at DOUBLE PRECISION NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolved_at DOUBLE PRECISION,
    PRIMARY KEY (device, seq)
);
"""

_RETURNS_PG = """CREATE TABLE IF NOT EXISTS returns (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    item_key TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    restocked BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    charge_id TEXT,
    credit_id TEXT UNIQUE,
    operator TEXT NOT NULL,
    dept TEXT NOT NULL,
    returned_at_ms BIGINT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS returns_charge_once ON returns (charge_id) WHERE outcome IN ('credited', 'voided');
CREATE TABLE IF NOT EXISTS item_releases (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    item_key TEXT NOT NULL,
    credit_id TEXT NOT NULL UNIQUE,
    released_at DOUBLE PRECISION NOT NULL
);
CREATE OR REPLACE VIEW consumption_ledger AS
    SELECT device, seq, 'charge' AS entry, charge_id, admission, gtin, item_code, name, lot, serial,
           price_fen AS amount_fen, operator, dept, used_at_ms AS at_ms, his_ref
    FROM consumption
    UNION ALL
    SELECT r.device, r.seq, 'credit', c.credit_id, c.admission, c.gtin, c.item_code, c.name, c.lot, c.serial,
           -c.price_fen, r.operator, r.dept, r.returned_at_ms, c.credit_his_ref
    FROM consumption c JOIN returns r ON r.credit_id = c.credit_id;
"""

_CATALOG_PG = (
    "CREATE TABLE IF NOT EXISTS catalog_terms (gtin TEXT PRIMARY KEY, supplier TEXT NOT NULL DEFAULT '', vbp "
    'BIGINT NOT NULL DEFAULT 0, vbp_price_fen BIGINT CHECK (vbp_price_fen >= 0))',
    'CREATE TABLE IF NOT EXISTS recalled_lots (gtin TEXT NOT NULL, lot TEXT NOT NULL, reason TEXT NOT NULL '
    "DEFAULT '', recalled_on TEXT NOT NULL DEFAULT '', PRIMARY KEY (gtin, lot))",
    'CREATE TABLE IF NOT EXISTS dept_stock (dept TEXT NOT NULL, gtin TEXT NOT NULL, PRIMARY KEY (dept, gtin))',
    'CREATE TABLE IF NOT EXISTS patient_census (admission TEXT PRIMARY KEY, status TEXT NOT NULL CHECK '
    "(status IN ('in_house', 'discharged')), updated_at DOUBLE PRECISION NOT NULL)",
    'CREATE TABLE IF NOT EXISTS device_catalog_versions (dept TEXT PRIMARY KEY, version BIGINT NOT NULL, '
    'digest TEXT NOT NULL, changed_at DOUBLE PRECISION NOT NULL)',
    'CREATE TABLE IF NOT EXISTS lot_expiry (gtin TEXT NOT NULL, lot TEXT NOT NULL, expiry TEXT NOT NULL, '
    'PRIMARY KEY (gtin, lot))',
)

_FLEET_PG = (
    'CREATE TABLE IF NOT EXISTS fleet_desired (device TEXT NOT NULL, site TEXT NOT NULL, component TEXT NOT '
    'NULL, version BIGINT NOT NULL, doc TEXT NOT NULL, pushed_at DOUBLE PRECISION NOT NULL, pushed_by TEXT '
    'NOT NULL, PRIMARY KEY (device, component))',
    'CREATE TABLE IF NOT EXISTS fleet_applied (device TEXT PRIMARY KEY, applied TEXT NOT NULL, reported_at '
    'DOUBLE PRECISION NOT NULL)',
    'CREATE TABLE IF NOT EXISTS command_seq (device TEXT PRIMARY KEY, seq BIGINT NOT NULL)',
    'CREATE TABLE IF NOT EXISTS staff (staff_id TEXT PRIMARY KEY, badge TEXT NOT NULL UNIQUE, role TEXT NOT '
    'NULL, depts TEXT NOT NULL, pin_hash TEXT, imported_at DOUBLE PRECISION NOT NULL)',
)

_CENSUS_PG = (
    'CREATE TABLE IF NOT EXISTS adt_messages (control_id TEXT PRIMARY KEY, received_at DOUBLE PRECISION NOT '
    'NULL, event TEXT NOT NULL, admission TEXT NOT NULL, outcome TEXT NOT NULL)',
    'CREATE TABLE IF NOT EXISTS census_state (id BIGINT PRIMARY KEY CHECK (id = 1), complete BIGINT NOT NULL,'
    ' changed_at DOUBLE PRECISION NOT NULL, changed_by TEXT NOT NULL)',
)

_AUDIT_PG = (
    """CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{}',
    prev TEXT,
    hash TEXT
)""",
    """CREATE TABLE IF NOT EXISTS audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    last_id BIGINT NOT NULL,
    last_hash TEXT NOT NULL
)""",
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit log is append-only' USING ERRCODE = 'integrity_constraint_violation'; END $$",
    "CREATE OR REPLACE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE OR REPLACE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
)

_CHARGE_CLAIMS = (
    "CREATE TABLE charge_claims (charge_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at REAL NOT NULL)",
    "CREATE INDEX charge_claims_owner ON charge_claims (owner)",
    "CREATE INDEX charges_pending_admission ON charges (admission, id) WHERE status = 'pending'",
)
_CHARGE_CLAIMS_PG = (
    "CREATE TABLE charge_claims (charge_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at DOUBLE PRECISION "
    "NOT NULL)",
    "CREATE INDEX charge_claims_owner ON charge_claims (owner)",
    "CREATE INDEX charges_pending_admission ON charges (admission, id) WHERE status = 'pending'",
)


def _bigints(sqlite_sql: str) -> str:
    """The PostgreSQL form of a script written for SQLite, whose INTEGER is 64 bits: milliseconds since the
    epoch (at_ms) and sums do not fit PostgreSQL's 32-bit INTEGER, so every INTEGER column is a BIGINT."""
    return sqlite_sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                              "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY").replace(" INTEGER ", " BIGINT ")


_SETTLEMENT_INDEXES = """
CREATE INDEX IF NOT EXISTS consumption_used_at ON consumption (used_at_ms, gtin, price_fen);
CREATE INDEX IF NOT EXISTS returns_returned_at ON returns (returned_at_ms);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", (
        Sql.script(_EVENTS_AND_CHARGES, _EVENTS_AND_CHARGES_PG),
        Sql(_CATALOG, _CATALOG_PG),
        Sql(statements(_AUDIT), _AUDIT_PG),
        Sql.script(_LINK_WATCH, _LINK_WATCH_PG),
        Sql(_FLEET, _FLEET_PG),
    )),
    Migration(2, "returns_and_credits", (
        AddColumns("consumption", (("credit_id", "TEXT"), ("credited_at", "REAL"), ("credit_his_ref", "TEXT"))),
        Sql.script(_RETURNS, _RETURNS_PG),
    )),
    Migration(3, "census_details", (
        AddColumns("patient_census", (
            ("initials", "TEXT NOT NULL DEFAULT ''"),
            ("ward", "TEXT NOT NULL DEFAULT ''"),
            ("dept", "TEXT NOT NULL DEFAULT ''"),
            ("bed", "TEXT NOT NULL DEFAULT ''"),
            ("admitted_at", "REAL"),
            ("discharged_at", "REAL"),
            ("source", "TEXT NOT NULL DEFAULT ''"),
        )),
        Sql(_CENSUS, _CENSUS_PG),
    )),
    Migration(4, "audit_chain", (
        AddColumns("audit_log", (("prev", "TEXT"), ("hash", "TEXT"))),
    )),
    Migration(5, "supply_terms_and_stock", (
        Sql.script(_SUPPLY_TERMS, _bigints(_SUPPLY_TERMS)),
    )),
    Migration(6, "incidents", (
        Sql.script(_INCIDENTS_SQLITE, _INCIDENTS_POSTGRESQL),
    )),
    Migration(7, "his_charge_lines", (
        Sql.script(_HIS_LINES, _HIS_LINES.replace("imported_at REAL", "imported_at DOUBLE PRECISION")),
    )),
    Migration(8, "web_access", (Sql.script(_WEB_ACCESS, _WEB_ACCESS.replace(" REAL", " DOUBLE PRECISION")),)),
    Migration(9, "books_ledger", (
        Sql.script(_BOOKS_LEDGER, _bigints(_BOOKS_LEDGER)),
        Sql(statements(_STOCK_BALANCES + _STOCK_BALANCES_SQLITE + _STOCK_BALANCES_FILL),
            statements(_bigints(_STOCK_BALANCES)) + _STOCK_BALANCES_POSTGRESQL + statements(_STOCK_BALANCES_FILL)),
    )),
    # several gateways share the HIS sending: which live instance sends which pending charge
    Migration(10, "charge_claims", (
        Sql(_CHARGE_CLAIMS, _CHARGE_CLAIMS_PG),
    )),
    Migration(11, "settlement_indexes", (
        Sql.script(_SETTLEMENT_INDEXES, _SETTLEMENT_INDEXES),  # the books read use by time of use, of return
    )),
)
"""Every migration, in order; the schema version of a store is the number of the last one applied."""
