"""Kafka wire encoding for the raw-socket scripts: just the non-flexible
primitives they build requests from."""

import struct
import time


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


def uvarint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def varint(v):
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s):
    b = s.encode()
    return uvarint(len(b) + 1) + b


def header(api_key, version, correlation_id, flexible=False):
    """Request header v1 (v2 adds an empty tagged-field section)."""
    h = i16(api_key) + i16(version) + i32(correlation_id) + string("raw-e2e")
    return h + (b"\x00" if flexible else b"")


def frame(payload):
    return i32(len(payload)) + payload


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def record_batch(value, corrupt_crc=False, values=None, producer_id=-1, producer_epoch=-1, base_sequence=-1):
    """A RecordBatch v2 of `values` (default: the one record `value`), null keys, no headers;
    an idempotent producer's batch when `producer_id` >= 0."""
    values = [value] if values is None else values
    now = int(time.time() * 1000)
    records = b""
    for delta, v in enumerate(values):
        record = i8(0) + varint(0) + varint(delta) + varint(-1) + varint(len(v)) + v + varint(0)
        records += varint(len(record)) + record
    after_crc = (
        i16(0)  # attributes: no compression, create time
        + i32(len(values) - 1)  # last offset delta
        + i64(now)
        + i64(now)
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(values))  # record count
        + records
    )
    crc = crc32c(after_crc) ^ (1 if corrupt_crc else 0)
    after_length = i32(-1) + i8(2) + struct.pack(">I", crc) + after_crc
    return i64(0) + i32(len(after_length)) + after_length


class Reader:
    """Reads a response body field by field."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def uvarint(self):
        shift = v = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.pos += self.uvarint()

    def string(self):
        n = self.take(">h")
        s = self.data[self.pos : self.pos + max(n, 0)].decode()
        self.pos += max(n, 0)
        return s

    def done(self, what):
        left = len(self.data) - self.pos
        if left:
            raise AssertionError(f"{what}: {left} unparsed bytes at the end of the response")
