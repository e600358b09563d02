"""spd-edge simulated hardware and peers (pins, readers, handhelds, HIS, broker) for tests and demos."""
