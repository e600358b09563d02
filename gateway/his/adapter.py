"""The one interface every HIS adapter implements, its result type and the HIS error family."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol, runtime_checkable


class HisOutcome(Enum):
    """What the outbox does with a charge after one attempt to send it."""

    ACCEPTED = "accepted"  # the HIS stored the charge: mark it done
    REJECTED = "rejected"  # the HIS refused it for good (AE/AR): park it for a person
    RETRY = "retry"  # nothing is known for sure (timeout, network, garbled answer): send again later


class RetryReason(StrEnum):
    """Stable `HisResult.code` values of a RETRY that did not come from an HL7 acknowledgement code."""

    CONNECT_FAILED = "connect_failed"
    SEND_FAILED = "send_failed"
    CONNECTION_CLOSED = "connection_closed"
    TIMEOUT = "timeout"
    NOT_AN_ACK = "not_an_ack"
    WRONG_CONTROL_ID = "wrong_control_id"
    BAD_FRAME = "bad_frame"


@dataclass(frozen=True)
class HisResult:
    """The outcome of one send.

    `code` is the HL7 acknowledgement code (``"AA"``, ``"AE"``, ``"CA"``...) when the HIS answered,
    a `RetryReason` value when it did not, or None.  `detail` is a human sentence (for AE/AR the
    HIS's own error text).  `his_ref` is the HIS's reference for its answer, when it gave one.
    """

    outcome: HisOutcome
    code: str | None
    detail: str
    his_ref: str | None = None


@runtime_checkable
class HisAdapter(Protocol):
    """Sends one rendered charge message to the HIS and reports what happened.

    `send` never raises for anything the HIS or the network does: those become a `HisResult`.
    A result is ACCEPTED only when the HIS positively acknowledged *this* control id.
    It raises `HisError` subclasses only for caller mistakes (a message whose own control id
    differs from `control_id`) or use after `close`.
    """

    def send(self, control_id: str, message: str) -> HisResult: ...

    def close(self) -> None: ...


class HisError(Exception):
    """Root of the HIS adapter errors; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


class HisConfigError(HisError, ValueError):
    """An adapter was configured with an impossible option value."""


class HisMessageError(HisError, ValueError):
    """The message handed to an adapter is not one it can send (e.g. its MSH-10 is not the control id)."""


class HisAdapterClosed(HisError, RuntimeError):
    """`send` was called after `close`."""
