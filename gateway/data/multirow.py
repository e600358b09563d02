"""Multi-row statements both engines take: a batch written in one statement instead of one per row.

On PostgreSQL every statement is a round trip to the server; on SQLite every row a statement steps over
hands the interpreter lock to the gateway's other threads once (``sqlite3_step`` runs without it). A
batch of charges, acceptances or scans as one ``INSERT ... VALUES (...), (...)`` (or ``UPDATE ... FROM
(VALUES ...)``, or ``... IN (...)``) costs one of either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

GROUP_ROWS = 400
"""Rows in one multi-row statement at most: 400 rows of 16 columns stay far under SQLite's 32,766 parameters."""


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive parts of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def marks(n: int) -> str:
    """``?, ?, ?`` for ``n`` values."""
    return ", ".join("?" * n)


def rows_of(width: int, n: int) -> str:
    """``(?, ?), (?, ?)`` for ``n`` rows of ``width`` values: a multi-row ``VALUES`` both engines take."""
    row = f"({marks(width)})"
    return ", ".join([row] * n)
