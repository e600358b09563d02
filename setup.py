"""Build hook: compile the charging bridge's Cython hot path when a compiler is there.

With no C compiler (or SPD_NO_EXTENSIONS=1) the package installs without the
extension and imports its pure-Python twin instead, as msgpack-python does.

SPD_REQUIRE_COMPILED=1 turns that fallback into an error: a release build (docs/deploy.md)
and `make test` with a compiler present must not ship or test the twin by accident.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE_COMPILED = os.environ.get("SPD_REQUIRE_COMPILED") == "1"


class CompiledBridgeRequired(RuntimeError):
    """SPD_REQUIRE_COMPILED=1 and the compiled charging bridge cannot be built."""


def _fallback(what: str, err: BaseException) -> None:
    if REQUIRE_COMPILED:
        raise CompiledBridgeRequired(f"SPD_REQUIRE_COMPILED=1: {what} not built: {err}") from err
    print(f"WARNING: {what} not built ({err}); the pure-Python twin will be used")


class OptionalBuildExt(build_ext):
    """Build extensions, but fall back to pure Python if the compiler is missing (unless required)."""

    def run(self) -> None:
        try:
            super().run()
        except CompiledBridgeRequired:
            raise
        except Exception as err:  # noqa: BLE001 - any build failure means: use the twin
            _fallback("compiled charging bridge", err)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            _fallback(ext.name, err)


def extensions() -> list:
    if os.environ.get("SPD_NO_EXTENSIONS") == "1":
        if REQUIRE_COMPILED:
            raise CompiledBridgeRequired("SPD_REQUIRE_COMPILED=1 and SPD_NO_EXTENSIONS=1 contradict each other")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as err:
        if REQUIRE_COMPILED:
            raise CompiledBridgeRequired(f"SPD_REQUIRE_COMPILED=1 but Cython is not installed: {err}") from err
        return []
    sources = [p for p in ["gateway/bridge/_cbridge.pyx"] if os.path.exists(p)]
    if not sources:
        if REQUIRE_COMPILED:
            raise CompiledBridgeRequired("SPD_REQUIRE_COMPILED=1 but gateway/bridge/_cbridge.pyx is missing")
        return []
    return cythonize(
        sources,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
