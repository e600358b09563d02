"""What the devices and the gateway both speak: the wire contract, the signed-command schema, the export,
catalog and allow-list documents, and the mechanisms both run (TLS settings and the MQTT client, durable
writes, heartbeats and sd_notify, back-off, strict TOML tables, the commands' logging set-up).

The gateway imports nothing from ``device``; both sides import this package (tests/test_package_boundary.py).
"""
