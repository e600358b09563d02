"""The gateway store's schema as numbered migrations, oldest first (see docs/data.md).

A migration is applied once, in one transaction, and its number recorded in ``schema_migrations``. Never
edit a migration that has shipped: add the next one. Each migration holds its SQL per engine
(:class:`Sql`); :class:`AddColumns` is the one schema step that looks at what exists, kept for the stores
made before the schema had a version (see :mod:`gateway.data.migrations`).

``0001_initial`` to ``0004_audit_chain`` are the schema as the release before versioning created it on a
fresh store, statement for statement (the text SQLite keeps in ``sqlite_master`` is the same), split where
that release grew it: 0002 to 0004 are the places where it added columns after looking at which existed.
"""

from __future__ import annotations

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

_SETTLEMENT_INDEXES = """
CREATE INDEX IF NOT EXISTS consumption_used_at ON consumption (used_at_ms, gtin, price_fen);
CREATE INDEX IF NOT EXISTS returns_returned_at ON returns (returned_at_ms);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", (
        Sql.script(_EVENTS_AND_CHARGES),
        Sql(_CATALOG),
        Sql.script(_AUDIT),
        Sql.script(_LINK_WATCH),
        Sql(_FLEET),
    )),
    Migration(2, "returns_and_credits", (
        AddColumns("consumption", (("credit_id", "TEXT"), ("credited_at", "REAL"), ("credit_his_ref", "TEXT"))),
        Sql.script(_RETURNS),
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
        Sql(_CENSUS),
    )),
    Migration(4, "audit_chain", (
        AddColumns("audit_log", (("prev", "TEXT"), ("hash", "TEXT"))),
    )),
    Migration(5, "supply_terms_and_stock", (
        Sql.script(_SUPPLY_TERMS, _SUPPLY_TERMS.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                                        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")),
    )),
    Migration(6, "settlement_indexes", (
        Sql.script(_SETTLEMENT_INDEXES, _SETTLEMENT_INDEXES),  # the books read use by time of use, of return
    )),
)
"""Every migration, in order; the schema version of a store is the number of the last one applied."""
