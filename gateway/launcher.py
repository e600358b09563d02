"""The ``spd-gateway`` entry point: check that the gateway extra is installed, then run the command line.

A cabinet controller installs ``spd-edge`` without the gateway's dependencies; started there,
``spd-gateway`` says which extra to install instead of failing on an import (spd_common/extras.py).
"""

from __future__ import annotations

import sys

from spd_common.extras import require_extras


def main(argv: list[str] | None = None) -> int:
    require_extras("spd-gateway", "gateway")
    from gateway.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
