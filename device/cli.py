"""``spd-device``: the field technician's command line (run, provision, doctor, log ...).

Each command lives in its own module exposing ``register(subparsers)``; this
file only assembles them, importing each lazily so a broken optional part
breaks only its own command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# modules that contribute commands; each defines register(subparsers)
COMMAND_MODULES = (
    "device.commands.log",
    "device.commands.run",
    "device.commands.provision",
    "device.commands.doctor",
    "device.commands.service",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spd-device", description="spd-edge cabinet and handheld agent")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    level = logging.DEBUG if a.verbose > 1 else logging.INFO if a.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(a.func(a))


if __name__ == "__main__":
    sys.exit(main())
