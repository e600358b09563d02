"""Which extras of the ``spd-edge`` distribution are installed, for the commands that need one.

One distribution carries the device agent, the gateway and the simulators; its base dependencies
are only the device agent's, so a cabinet controller installs nothing else. ``spd-gateway`` and
``spd-sim`` call :func:`require_extras` before importing anything of theirs: on a host without
their extra they stop with one line naming what to install, not with an ImportError traceback
from deep inside. The requirements are read from the installed metadata, so ``pyproject.toml``
stays the one list. Run from a source tree that was never installed there is no metadata to read,
and nothing is checked.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "spd-edge"

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""^extra\s*==\s*["']([^"']+)["']$""")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(extra: str, requires: list[str], seen: set[str]) -> list[str]:
    """Distribution names the extra asks for, following ``spd-edge[other]`` references."""
    names: list[str] = []
    for line in requires:
        spec, _, marker = line.partition(";")
        wanted = _EXTRA_MARKER.match(marker.strip())
        if wanted is None or _normalise(wanted.group(1)) != extra:
            continue  # a base requirement, or another extra's
        match = _NAME.match(spec)
        if match is None:
            continue
        name, inner = match.group(1), match.group(2)
        if _normalise(name) == DISTRIBUTION:
            for other in (inner or "").split(","):
                other = _normalise(other.strip())
                if other and other not in seen:
                    seen.add(other)
                    names += _requirements(other, requires, seen)
        else:
            names.append(name)
    return names


def missing_requirements(*extras: str) -> list[str]:
    """The distributions the given extras require that are not installed ([] when unknowable)."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    missing: list[str] = []
    for extra in extras:
        for name in _requirements(_normalise(extra), requires, {_normalise(extra)}):
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                if name not in missing:
                    missing.append(name)
    return missing


def require_extras(command: str, *extras: str) -> None:
    """Stop ``command`` with a clear message when a package of one of ``extras`` is missing."""
    missing = missing_requirements(*extras)
    if missing:
        wanted = f"{DISTRIBUTION}[{','.join(extras)}]"
        raise SystemExit(
            f"{command}: this host lacks the packages of the {'extras' if len(extras) > 1 else 'extra'} "
            f"'{wanted}' (missing: {', '.join(missing)}).\n"
            f"Install them with: pip install '{wanted}' (from a source tree: pip install '.[{','.join(extras)}]'), "
            "with -c constraints.txt for the tested versions."
        )
