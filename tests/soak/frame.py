"""ferrox's compressed-value frame, as a client that bypasses ferrox reads
it (docs/architecture.md, "Transparent compression"): a 16-byte header,
then the payload.

    0  magic F7 'F' 'X' 'Z'     6  original length, u32 LE
    4  version 1                10  CRC-32 of the original bytes, LE
    5  method: 0 stored,        14  low 16 bits of the CRC-32 of bytes 0..14
       1 lz4 block, 2 zstd

Anything else is a plain value. lz4 is decoded here in pure Python (the
soak's verifier needs nothing installed); zstd is not (the soak uses lz4).
"""

import struct
import zlib

MAGIC = b"\xf7FXZ"
HEADER = 16


def parse(value):
    """(method, original length, crc, payload) of a frame, or None."""
    if len(value) < HEADER or value[:4] != MAGIC or value[4] != 1 or value[5] > 2:
        return None
    if zlib.crc32(value[:14]) & 0xFFFF != struct.unpack_from("<H", value, 14)[0]:
        return None
    length, crc = struct.unpack_from("<II", value, 6)
    return value[5], length, crc, value[HEADER:]


def _length(src, i, length):
    """A token's 4-bit length, extended by the bytes at `i` when it is 15;
    the length and where the bytes end."""
    if length == 15:
        while True:
            b = src[i]
            i += 1
            length += b
            if b != 255:
                break
    return length, i


def lz4_block(src, n):
    """LZ4 block format (no frame, no size prefix), to n bytes."""
    out = bytearray()
    i = 0
    while i < len(src):
        token = src[i]
        i += 1
        literals, i = _length(src, i, token >> 4)
        out += src[i:i + literals]
        i += literals
        if i >= len(src):
            break
        offset = src[i] | src[i + 1] << 8
        i += 2
        length, i = _length(src, i, token & 15)
        length += 4
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # overlapping: a run
            for k in range(length):
                out.append(out[start + k])
    if len(out) != n:
        raise ValueError(f"lz4 payload decodes to {len(out)} bytes, the header says {n}")
    return bytes(out)


def decode(value):
    """The original bytes of a stored value: a frame decoded and checked,
    anything else as it is."""
    frame = parse(value)
    if frame is None:
        return value
    method, length, crc, payload = frame
    if method == 0:
        original = payload
    elif method == 1:
        original = lz4_block(payload, length)
    else:
        raise ValueError("a zstd frame: the soak's verifier reads lz4 only")
    if len(original) != length or zlib.crc32(original) != crc:
        raise ValueError("a frame whose payload fails its checks")
    return original
