"""MLLP framing, sans-I/O: bytes in, complete frames out; a message in, framed bytes out.

MLLP (HL7 v2 "minimal lower layer protocol") wraps each message as ``VT message FS CR``
(``0x0B ... 0x1C 0x0D``). This module knows nothing of sockets, asyncio or clocks, so the
same :class:`Framer` runs under the client, the listener, the fault peer and the unit tests,
and every edge case can be tested by feeding bytes (h11's design; the reader rules follow
GoogleCloudPlatform/mllp ``mllp/mllp.go`` and python-hl7 ``readblock``):

- Bytes before ``VT`` are skipped and *counted* (:attr:`Framer.junk_bytes`): a peer that
  sends them is misbehaving, and an operator should be able to see that in the metrics.
- ``FS`` not followed by ``CR`` is a :class:`FramingError`. The frame is discarded, never
  half-parsed as a message, and the stream resynchronises at the next ``VT``.
- ``VT`` inside a frame means the peer abandoned the frame it was sending: also an error;
  the partial frame is discarded and the new ``VT`` starts a new frame.
- A frame longer than ``max_frame`` is discarded (memory guard against a peer that never
  sends ``FS``); the rest of it counts as junk until the next ``VT``.

Errors never lose good frames: :meth:`Framer.feed` consumes *all* the bytes it is given and
then, if anything went wrong, raises one :class:`FramingError` whose ``messages`` holds every
complete frame from that chunk, in order. Error messages carry offsets and sizes, never
payload bytes (they may be patient data).
"""

from __future__ import annotations

from enum import Enum

from adapter.errors import ParseError

__all__ = ["CR", "DEFAULT_MAX_FRAME", "END", "FS", "START", "VT", "Framer", "FramingError", "frame"]

VT = 0x0B
FS = 0x1C
CR = 0x0D
START = b"\x0b"
END = b"\x1c\r"
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""16 MiB: far above any order or result message, far below what would hurt the process."""


class FramingError(ParseError):
    """The byte stream broke the MLLP rules; the offending frame was discarded.

    Attributes:
        problems: one short description per problem found in the chunk (no payload bytes).
        messages: the complete, valid frames found in the same chunk, in stream order; the
            caller should still process them.
    """

    def __init__(self, problems: list[str], messages: list[bytes]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.messages = messages


class _State(Enum):
    HUNT = "hunt"  # outside a frame, looking for VT
    BODY = "body"  # inside a frame, collecting until FS
    TAIL = "tail"  # saw FS, the next byte must be CR


class Framer:
    """Incremental MLLP de-framer for one byte stream (one connection).

    Feed it whatever the transport delivers, in chunks of any size (one byte at a time
    works); it returns the payloads (the bytes between ``VT`` and ``FS CR``) of the frames
    completed by that chunk. Counters are cumulative for the stream.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.junk_bytes = 0
        """Bytes seen outside any frame (before a VT), including the rest of oversize frames."""
        self.frames = 0
        """Complete frames returned so far."""
        self.errors = 0
        """Frames discarded for breaking the rules."""
        self.oversized = 0
        """Frames discarded for being longer than ``max_frame`` (a listener closes the sender)."""
        self._state = _State.HUNT
        self._body = bytearray()
        self._offset = 0  # stream offset of the next byte fed, for error messages

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not ended (a partial frame is buffered)."""
        return self._state is not _State.HUNT

    @property
    def buffered(self) -> int:
        """Bytes of the partial frame held in memory."""
        return len(self._body)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payloads of the frames it completed.

        Raises:
            FramingError: after consuming all of ``data``, if any frame in it was discarded.
                ``exc.messages`` holds the valid frames of this chunk.
        """
        n = len(data)
        if (  # fast path: exactly one whole, clean frame (the usual ACK or message)
            self._state is _State.HUNT
            and n >= 3
            and data[0] == VT
            and data.endswith(END)
            and data.find(b"\x1c", 1) == n - 2
            and data.find(START, 1) < 0
            and n - 3 <= self.max_frame
        ):
            self._offset += n
            self.frames += 1
            return [data[1:-2]]
        messages: list[bytes] = []
        problems: list[str] = []
        i, base = 0, self._offset
        while i < n:
            if self._state is _State.HUNT:
                j = data.find(START, i)
                if j < 0:
                    self.junk_bytes += n - i
                    break
                self.junk_bytes += j - i
                i = j + 1
                self._state = _State.BODY
                self._body.clear()
            elif self._state is _State.BODY:
                end = data.find(b"\x1c", i)
                stop = n if end < 0 else end
                restart = data.find(START, i, stop)
                if restart >= 0:
                    problems.append(f"start block inside a frame at offset {base + restart}")
                    self._discard()
                    i = restart + 1
                    self._state = _State.BODY
                    continue
                if len(self._body) + (stop - i) > self.max_frame:
                    problems.append(f"frame longer than {self.max_frame} bytes")
                    self.oversized += 1
                    self._discard()
                    self.junk_bytes += stop - i
                    i = stop  # the FS (if any) is then junk too, in HUNT
                    continue
                self._body += data[i:stop]
                i = stop
                if end >= 0:
                    i = end + 1
                    self._state = _State.TAIL
            else:  # TAIL
                if data[i] == CR:
                    messages.append(bytes(self._body))
                    self.frames += 1
                    self._body.clear()
                    self._state = _State.HUNT
                    i += 1
                else:
                    problems.append(f"end block not followed by CR at offset {base + i - 1}")
                    self._discard()  # do not consume data[i]: it may be the next VT
        self._offset += n
        if problems:
            raise FramingError(problems, messages)
        return messages

    def _discard(self) -> None:
        self.errors += 1
        self._body.clear()
        self._state = _State.HUNT


def frame(message: bytes) -> bytes:
    """Wrap one message for the wire: ``VT message FS CR``.

    Raises:
        ValueError: ``message`` contains VT or FS. The receiver would split or truncate it;
            free text must have been escaped before this point, so this is our bug.
    """
    if b"\x0b" in message or b"\x1c" in message:
        raise ValueError("message contains an MLLP framing byte (VT or FS); escape it first")
    return b"\x0b" + message + b"\x1c\r"
