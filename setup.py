"""Build hook: compile the charging bridge's Cython hot path when a compiler is there.

With no C compiler (or SPD_NO_EXTENSIONS=1) the package installs without the
extension and imports its pure-Python twin instead, as msgpack-python does.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but fall back to pure Python if the compiler is missing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - any build failure means: use the twin
            print(f"WARNING: compiled charging bridge not built ({err}); the pure-Python twin will be used")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001
            print(f"WARNING: {ext.name} not built ({err}); the pure-Python twin will be used")


def extensions() -> list:
    if os.environ.get("SPD_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    sources = [p for p in ["gateway/bridge/_cbridge.pyx"] if os.path.exists(p)]
    if not sources:
        return []
    return cythonize(
        sources,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
