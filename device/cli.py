"""``spd-device``: the field technician's command line (run, provision, doctor, log ...).

Each command lives in its own module exposing ``register(subparsers)``; this
file only assembles them, importing each lazily so a broken optional part
breaks only its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spd_common.logsetup import add_verbose_flag, run_command

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
    add_verbose_flag(p)
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
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
