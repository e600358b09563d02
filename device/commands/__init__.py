"""spd-device commands, one module each; see device/cli.py."""
