"""MLLP framing (HL7 Minimal Lower Layer Protocol): <VT> message <FS><CR>, with an incremental decoder."""

from __future__ import annotations

import logging

from gateway.his.adapter import HisError

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
END_SEQUENCE = END_BLOCK + CARRIAGE_RETURN
DEFAULT_ENCODING = "utf-8"
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024


class MllpError(HisError, ValueError):
    """A framing problem: `reason` is one of frame_too_large, undecodable, unencodable, bad_payload."""


def frame(message: bytes) -> bytes:
    """Wrap one encoded HL7 message in an MLLP block.

    The payload must not contain the block characters themselves (HL7 text never does).
    """
    if START_BLOCK in message or END_SEQUENCE in message:
        raise MllpError("bad_payload", "an MLLP payload must not contain <VT> or <FS><CR>")
    return START_BLOCK + message + END_SEQUENCE


def frame_text(message: str, encoding: str = DEFAULT_ENCODING) -> bytes:
    """Encode an HL7 message with `encoding` and wrap it in an MLLP block."""
    try:
        payload = message.encode(encoding)
    except UnicodeEncodeError as err:
        raise MllpError("unencodable", f"message cannot be encoded as {encoding}: {err.reason}") from err
    return frame(payload)


def decode_text(payload: bytes, encoding: str = DEFAULT_ENCODING) -> str:
    """Decode one received MLLP payload to text."""
    try:
        return payload.decode(encoding)
    except UnicodeDecodeError as err:
        raise MllpError("undecodable", f"frame is not valid {encoding} at byte {err.start}") from err


class MllpDecoder:
    """Turns a byte stream into MLLP payloads, one `feed` at a time.

    Bytes outside a block are skipped (counted in `garbage_bytes`).  A start block seen inside an
    unfinished block abandons the unfinished one (a sender that restarted mid-frame; counted in
    `truncated_frames`).  A block longer than `max_frame_bytes` is discarded and `feed` raises
    `MllpError(reason="frame_too_large")`; the decoder stays usable, and payloads completed
    in the same call before the error are returned by the next `feed` call.
    """

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise MllpError("bad_limit", f"max_frame_bytes must be positive, got {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self.garbage_bytes = 0
        self.truncated_frames = 0
        self.oversize_frames = 0
        self._buffer = bytearray()
        self._scan_from = 1  # where to resume looking for the end of the block at _buffer[0]
        self._skipping = False  # inside an oversize block: drop bytes until its end
        self._pending: list[bytes] = []

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for an unfinished block."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every payload completed by them, in order."""
        frames, self._pending = self._pending, []
        self._buffer += data
        oversize = 0
        while self._buffer:
            if self._skipping:
                if not self._skip_oversize():
                    break
                continue
            start = self._buffer.find(START_BLOCK)
            if start < 0:
                self.garbage_bytes += len(self._buffer)
                self._buffer.clear()
                break
            if start > 0:
                self.garbage_bytes += start
                del self._buffer[:start]
                self._scan_from = 1
            end = self._buffer.find(END_SEQUENCE, self._scan_from)
            restart = self._buffer.find(START_BLOCK, 1)
            if restart >= 0 and (end < 0 or restart < end):
                self.truncated_frames += 1
                logger.warning("MLLP block abandoned after %d bytes: a new block started", restart)
                del self._buffer[:restart]
                self._scan_from = 1
                continue
            if end < 0:
                held = len(self._buffer) - 1 - (1 if self._buffer.endswith(END_BLOCK) else 0)
                if held > self.max_frame_bytes:
                    oversize += 1
                    self._skipping = True
                    self._drop_buffer_keeping_end_block()
                    break
                self._scan_from = max(1, len(self._buffer) - 1)
                break
            payload = bytes(self._buffer[1:end])
            del self._buffer[: end + len(END_SEQUENCE)]
            self._scan_from = 1
            if len(payload) > self.max_frame_bytes:
                oversize += 1
                continue
            frames.append(payload)
        if oversize:
            self.oversize_frames += oversize
            self._pending = frames
            raise MllpError("frame_too_large", f"MLLP block longer than {self.max_frame_bytes} bytes discarded")
        return frames

    def _skip_oversize(self) -> bool:
        """Drop the rest of an oversize block; True when its end (or a new block) was reached."""
        end = self._buffer.find(END_SEQUENCE)
        start = self._buffer.find(START_BLOCK)
        if start >= 0 and (end < 0 or start < end):
            del self._buffer[:start]
        elif end >= 0:
            del self._buffer[: end + len(END_SEQUENCE)]
        else:
            self._drop_buffer_keeping_end_block()
            return False
        self._skipping = False
        self._scan_from = 1
        return True

    def _drop_buffer_keeping_end_block(self) -> None:
        keep_end_block = self._buffer.endswith(END_BLOCK)
        self._buffer.clear()
        if keep_end_block:
            self._buffer += END_BLOCK
