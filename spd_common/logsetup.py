"""The logging set-up of every command line: ``spd-device``, ``spd-gateway`` and ``spd-sim``'s commands.

One line format (time, logger, level, message) to stderr, where systemd's journal collects it;
``-v`` shows INFO, ``-vv`` DEBUG, and without it a command shows its ``quiet`` level and above: WARNING for a
command a person runs, INFO for a service (``run``, ``service``: connections, start and stop, retries are what the
journal is read for), which says so with :func:`service_logging`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Final, TextIO

LOG_FORMAT: Final = "%(asctime)s %(name)s %(levelname)s %(message)s"


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v`` / ``-vv`` on a command line, read back by :func:`setup_logging` as ``args.verbose``."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")


def setup_logging(verbose: int = 0, *, quiet: int = logging.WARNING, stream: TextIO | None = None) -> None:
    """Configure the root logger once for a command (a no-op when it already has handlers)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else quiet
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=stream)


def service_logging(parser: argparse.ArgumentParser) -> None:
    """Mark a subcommand as a service: without ``-v`` it logs INFO and above, not only warnings."""
    parser.set_defaults(quiet_level=logging.INFO)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse the command line, set up logging from ``-v``, run the chosen subcommand (``args.func``)."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose, quiet=getattr(args, "quiet_level", logging.WARNING))
    return int(args.func(args))


def formatter() -> logging.Formatter:
    """The same line format for a handler a command adds itself (e.g. a log file beside a screen)."""
    return logging.Formatter(LOG_FORMAT)
