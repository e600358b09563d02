"""Every option of ``spd-gateway`` and ``spd-device`` says what it does in ``--help``."""

from __future__ import annotations

import argparse

import pytest

import device.cli
import gateway.cli


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {c.dest for c in action._choices_actions if c.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    missing.append(f"{path} {name} (command)")
                missing += _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("cli", [gateway.cli, device.cli], ids=["spd-gateway", "spd-device"])
def test_every_option_has_help(cli: object) -> None:
    parser = cli.build_parser()  # type: ignore[attr-defined]
    assert _undocumented(parser, parser.prog) == []
