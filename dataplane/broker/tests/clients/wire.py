"""Kafka wire encoding for the raw-socket scripts: just the non-flexible
primitives they build requests from."""

import struct


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    """A nullable STRING (str or bytes)."""
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def nbytes(b):
    """Nullable BYTES."""
    return i32(-1) if b is None else i32(len(b)) + b


def array(items):
    items = list(items)
    return i32(len(items)) + b"".join(items)
