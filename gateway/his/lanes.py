"""Which HIS lane carries a patient's charges (every charge of one admission goes through one lane)."""

from __future__ import annotations

import zlib


def lane_of(admission: str, lanes: int) -> int:
    """The lane that carries every charge of this patient."""
    return zlib.crc32(admission.encode()) % lanes if lanes > 1 else 0
