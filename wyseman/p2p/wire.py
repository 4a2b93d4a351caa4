"""The framing of ``/wyseman/1.0.0`` (docs/protocol.md, 15.2): each message is an
unsigned varint (LEB128, as multiformats and js ``it-length-prefixed`` write it) giving
the length of the JSON text that follows. No libp2p here: the server and the client
share it, and it is tested without a network."""

from __future__ import annotations

#: the protocol id negotiated by multistream-select
PROTOCOL_ID = "/wyseman/1.0.0"
#: a length prefix longer than this is refused (what a 64-bit varint can take)
MAX_VARINT_BYTES = 10


class FrameError(ValueError):
    """The peer broke the framing (the message says how): the stream is closed."""


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("a varint is unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame(payload: bytes) -> bytes:
    """``payload`` with its length prefix."""
    return encode_varint(len(payload)) + payload


class FrameReader:
    """Cuts a byte stream into messages of at most ``max_size`` bytes. Holds at most
    one partial message and its prefix: a prefix over :data:`MAX_VARINT_BYTES` or
    announcing more than ``max_size`` raises :class:`FrameError` before its body is
    read (nothing is buffered for it)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._need: int | None = None     # the body length once the prefix is read

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The complete messages ``data`` finishes (in order)."""
        self._buffer += data
        out: list[bytes] = []
        while True:
            if self._need is None:
                length = self._prefix()
                if length is None:
                    return out
                self._need = length
            if len(self._buffer) < self._need:
                return out
            out.append(bytes(self._buffer[:self._need]))
            del self._buffer[:self._need]
            self._need = None

    def _prefix(self) -> int | None:
        value = 0
        for index, byte in enumerate(self._buffer):
            if index >= MAX_VARINT_BYTES:
                break
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if value > self.max_size:
                    raise FrameError(f"a message of {value} bytes is over the limit of "
                                     f"{self.max_size} (max_message_size)")
                del self._buffer[:index + 1]
                return value
        if len(self._buffer) >= MAX_VARINT_BYTES:
            raise FrameError(f"a length prefix longer than {MAX_VARINT_BYTES} bytes")
        if value > self.max_size:     # (an unfinished prefix already too large)
            raise FrameError(f"a message over the limit of {self.max_size} bytes "
                             "(max_message_size)")
        return None
