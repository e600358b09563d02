"""spd-edge device agent: the cabinet controller and handheld side."""

__version__ = "0.1.0"
