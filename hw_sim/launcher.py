"""The ``spd-sim`` entry point: check that the simulators' extras are installed, then run the command.

The simulators ship in the one ``spd-edge`` distribution (docs/deploy.md says why) but their
dependencies are the ``sim`` extra; a host without it is told what to install (device/extras.py).
"""

from __future__ import annotations

import sys

from device.extras import require_extras

# subcommands that need more than the sim extra
EXTRA_EXTRAS = {
    "camera-bench": ("camera",),  # renders symbols with OpenCV and decodes them with zxing-cpp and pyzbar
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in ("-h", "--help"):
        require_extras("spd-sim", "sim", *EXTRA_EXTRAS.get(args[0], ()))
    from hw_sim.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
