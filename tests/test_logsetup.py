"""A service logs what the journal is read for (INFO) without -v; a command a person runs only warnings."""

from __future__ import annotations

import logging

import pytest

from device.cli import build_parser as device_parser
from gateway.cli import build_parser as gateway_parser


@pytest.mark.parametrize(("parser", "argv", "level"), [
    (gateway_parser, ["run"], logging.INFO),
    (gateway_parser, ["service"], logging.INFO),
    (gateway_parser, ["migrate", "--db", "x.db"], logging.WARNING),
    (device_parser, ["run"], logging.INFO),
    (device_parser, ["service"], logging.INFO),
    (device_parser, ["doctor"], logging.WARNING),
])
def test_services_log_info_by_default(parser: object, argv: list[str], level: int) -> None:
    args = parser().parse_args(argv)  # type: ignore[operator]
    assert getattr(args, "quiet_level", logging.WARNING) == level
