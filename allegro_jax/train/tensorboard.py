"""A dependency-free TensorBoard scalar writer (``events.out.tfevents.*`` files).

``tensorboardX`` and ``flax.metrics.tensorboard`` are not installed here (the latter needs
TensorFlow), so the few bytes TensorBoard needs for scalars are written directly: TFRecord
framing (length, masked CRC-32C of the length, the serialised ``Event`` proto, masked
CRC-32C of the data) around hand-encoded ``Event{wall_time, step, summary{value{tag,
simple_value}}}`` messages. On resume a ``SessionLog.START`` event at the resumed step makes
TensorBoard drop the rows the killed run wrote after its last checkpoint.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as used by TFRecord."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, **fields: bytes) -> bytes:
    msg = _varint((1 << 3) | 1) + struct.pack("<d", wall_time)  # wall_time: double, field 1
    msg += _varint((2 << 3) | 0) + _varint(int(step))  # step: int64, field 2
    numbers = {"file_version": 3, "summary": 5, "session_log": 7}
    for name, payload in fields.items():
        msg += _field_bytes(numbers[name], payload)
    return msg


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked_crc(header))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


class SummaryWriter:
    """Append scalars to a new event file in ``logdir``.

    Args:
        logdir: directory (created).
        restart_step: if given, write ``SessionLog.START`` at this step so that TensorBoard
            discards older events at steps >= it (a resumed run).
    """

    def __init__(self, logdir: str | os.PathLike, restart_step: int | None = None):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        n = 0
        while self.path.exists():
            n += 1
            self.path = self.logdir / f"{name}.{n}"
        self._file = open(self.path, "ab")
        self._write(_event(time.time(), 0, file_version=b"brain.Event:2"))
        if restart_step is not None:
            self._write(_event(time.time(), restart_step, session_log=b"\x08\x01"))
        self.flush()

    def _write(self, event: bytes) -> None:
        self._file.write(_record(event))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write several scalars at one step (non-numeric values are skipped)."""
        summary = b""
        for tag, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            v = _field_bytes(1, tag.encode()) + _varint((2 << 3) | 5) + struct.pack("<f", value)
            summary += _field_bytes(1, v)
        self._write(_event(time.time(), step, summary=summary))
        self.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """Decode the scalars of an event file written by :class:`SummaryWriter` (for tests).

    Checks both CRCs of every record.

    Returns:
        ``(step, tag, value)`` in file order.
    """
    data = Path(path).read_bytes()
    out, pos = [], 0

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result, i

    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = varint(buf, i)
            elif wire == 1:
                value, i = buf[i : i + 8], i + 8
            elif wire == 5:
                value, i = buf[i : i + 4], i + 4
            elif wire == 2:
                n, i = varint(buf, i)
                value, i = buf[i : i + n], i + n
            else:
                raise ValueError(f"unsupported wire type {wire}")
            yield number, value

    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[pos + 8 : pos + 12])[0] != _masked_crc(header):
            raise ValueError(f"bad length CRC at byte {pos}")
        body = data[pos + 12 : pos + 12 + length]
        if struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] != _masked_crc(body):
            raise ValueError(f"bad data CRC at byte {pos}")
        pos += 16 + length
        step = 0
        for number, value in fields(body):
            if number == 2:
                step = value
            elif number == 5:
                for _, v in fields(value):
                    f = dict(fields(v))
                    out.append((step, f[1].decode(), struct.unpack("<f", f[2])[0]))
    return out
