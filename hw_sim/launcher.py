"""The ``spd-sim`` entry point: check that the simulators' extras are installed, then run the command.

The simulators ship in the one ``spd-edge`` distribution (docs/deploy.md says why) but their
dependencies are the ``sim`` extra; a host without it is told what to install (spd_common/extras.py).
Some subcommands need more: the camera bench and the camera-frame fuzz target the ``camera``
extra, fuzzing with the default engine (atheris) the ``fuzz`` extra.
"""

from __future__ import annotations

import sys

from spd_common.extras import require_extras


def extras_for(args: list[str]) -> tuple[str, ...]:
    """The extras the subcommand ``args[0]`` with its arguments needs."""
    extras = ["sim"]
    if args[0] == "camera-bench":
        extras.append("camera")  # renders symbols with OpenCV, decodes them with zxing-cpp and pyzbar
    elif args[0] == "fuzz":
        if "random" not in args and "--engine=random" not in args:
            extras.append("fuzz")  # atheris, the default engine
        if "camera_frame" in args or "all" in args:
            extras.append("camera")
    return tuple(extras)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in ("-h", "--help"):
        require_extras("spd-sim", *extras_for(args))
    from hw_sim.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
