"""MCAP integrity: chunk CRCs for bags written by ``rosbags``.

rosbags writes MCAP chunks with ``uncompressed_crc = 0`` ("not computed"), so a flipped or zeroed byte inside a
message payload (a JPEG, say) reads back silently. :func:`add_chunk_crcs` fills in the CRC-32 of every
uncompressed chunk in place after the bag is closed; readers that check CRCs (rosbags, ``ros2 bag``, the mcap
libraries) then reject a damaged chunk with a checksum error instead of returning wrong data.

MCAP layout used here (https://mcap.dev/spec): 8-byte magic, then records ``opcode u8, length u64 LE, content``;
a Chunk (opcode 0x06) is ``message_start_time u64, message_end_time u64, uncompressed_size u64,
uncompressed_crc u32, compression (u32 length + bytes), records (u64 length + bytes)``.
"""
from __future__ import annotations

import struct
from binascii import crc32
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
OP_CHUNK = 0x06
OP_FOOTER = 0x02


def add_chunk_crcs(path: str | Path) -> int:
    """Write the CRC-32 of each uncompressed chunk whose CRC is 0 into ``path``; returns the chunks updated.

    Compressed chunks (zstd/lz4) are left alone (their CRC covers the decompressed bytes). Raises ``ValueError``
    for a file that is not MCAP.
    """
    path = Path(path)
    updated = 0
    with open(path, "r+b") as fh:
        if fh.read(8) != MAGIC:
            raise ValueError(f"{path}: not an MCAP file (bad magic)")
        pos = 8
        size = path.stat().st_size
        while pos + 9 <= size:
            fh.seek(pos)
            op, length = struct.unpack("<BQ", fh.read(9))
            if op == OP_FOOTER:
                break
            if op == OP_CHUNK:
                head = fh.read(28)
                _, _, usize, crc = struct.unpack("<QQQI", head)
                (clen,) = struct.unpack("<I", fh.read(4))
                compression = fh.read(clen)
                (rlen,) = struct.unpack("<Q", fh.read(8))
                if crc == 0 and compression == b"" and rlen == usize:
                    value = crc32(fh.read(rlen))
                    fh.seek(pos + 9 + 24)
                    fh.write(struct.pack("<I", value))
                    updated += 1
            pos += 9 + length
    return updated
