"""spd-edge gateway: the hospital side — ingest, charging bridge, HIS adapters, fleet, operations."""
