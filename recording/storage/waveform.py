"""A recording's waveform for the pages: the lowest and highest sample of each of N columns,
read from the file in chunks (bounded memory, whatever the length: an hour at 8 kHz is 57.6 MB
of samples, and this holds one 64 KiB chunk and one column's samples at a time).

MixMonitor writes signed linear PCM in a WAV container for ``.wav`` and ``.wav16`` names, and
bare 16-bit samples for ``.sln``; other formats (GSM, mu-law, MP3) have no waveform here.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 16
# NOTE: a WAV header whose data size is 0 or all ones was not closed (MixMonitor writes it on
# close); the samples are then whatever the file holds after the header.
_UNSIZED = (0, 0xFFFFFFFF)


class NoWaveform(Exception):
    """The file's format has no waveform here; the message says why."""


@dataclass(frozen=True)
class Waveform:
    """``seconds`` of audio; ``columns`` of (lowest, highest) sample in -1.0..1.0."""

    seconds: float
    columns: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class _Format:
    offset: int  # where the samples begin
    size: int  # bytes of samples
    rate: int
    channels: int
    width: int  # bytes per sample: 1 (unsigned) or 2 (signed little-endian)


def _wav_format(handle, file_size: int) -> _Format:
    riff = handle.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise NoWaveform("not a RIFF WAVE file")
    fmt = None
    while True:
        header = handle.read(8)
        if len(header) < 8:
            raise NoWaveform("no data chunk in the WAV file")
        name, size = header[:4], struct.unpack("<I", header[4:])[0]
        if name == b"fmt ":
            body = handle.read(min(size, 64))
            if len(body) < 16:
                raise NoWaveform("a WAV fmt chunk too short")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag not in (1, 0xFFFE) or bits not in (8, 16) or not channels or not rate:
                raise NoWaveform(f"WAV format {tag} with {bits}-bit samples has no waveform here (16-bit PCM has)")
            fmt = (rate, channels, bits // 8)
            handle.seek(size - len(body) + (size & 1), 1)
        elif name == b"data":
            if fmt is None:
                raise NoWaveform("a WAV data chunk before its fmt chunk")
            offset = handle.tell()
            available = max(0, file_size - offset)
            size = available if size in _UNSIZED or size > available else size
            return _Format(offset, size, *fmt)
        else:
            handle.seek(size + (size & 1), 1)


def _format(path: Path, handle, file_size: int) -> _Format:
    suffix = path.suffix.lower()
    if suffix in (".wav", ".wav16"):
        return _wav_format(handle, file_size)
    if suffix == ".sln":
        return _Format(0, file_size, 8000, 1, 2)
    raise NoWaveform(f"{suffix or 'a file without extension'} recordings have no waveform here (WAV or sln have)")


def peaks(path: Path, columns: int = 600) -> Waveform:
    """The waveform of the recording at ``path`` in ``columns`` columns. Raises NoWaveform
    for a format without one, OSError when the file cannot be read."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        fmt = _format(path, handle, size)
        handle.seek(fmt.offset)
        frame = fmt.width * fmt.channels
        frames = fmt.size // frame
        if not frames:
            return Waveform(0.0, ())
        columns = max(1, min(columns, frames))
        return Waveform(frames / fmt.rate, tuple(_columns(handle, fmt, frames, columns)))


# The high byte of a signed 16-bit sample, with its sign bit flipped, orders as the sample does:
# the waveform is drawn from those 256 levels (ample for a picture), and bytes are compared by
# min() and max() in C without making an object per sample.
_FLIP = bytes((b ^ 0x80) for b in range(256))


def _columns(handle, fmt: _Format, frames: int, columns: int):
    """(lowest, highest) of each column, reading CHUNK bytes at a time."""
    total = frames * fmt.channels  # samples
    chunk = CHUNK - CHUNK % (fmt.width * fmt.channels)
    column, low, high = 0, 255, 0
    bound = _bound(1, columns, total, fmt.channels)  # samples before the end of column 0
    seen = 0
    while seen < total:
        raw = handle.read(min(chunk, (total - seen) * fmt.width))
        if len(raw) < fmt.width:
            break
        # NOTE: WAV samples are little-endian whatever the host: the high byte comes second.
        levels = raw[1::2].translate(_FLIP) if fmt.width == 2 else raw
        start = 0
        while start < len(levels):
            stop = min(len(levels), start + bound - seen)
            if stop > start:
                part = levels[start:stop]
                low, high = min(low, min(part)), max(high, max(part))
            seen += stop - start
            start = stop
            if seen >= bound:
                yield _level(low), _level(high)
                column += 1
                low, high = 255, 0
                if column >= columns:
                    return
                bound = _bound(column + 1, columns, total, fmt.channels)
    if low <= high:
        yield _level(low), _level(high)


def _level(byte: int) -> float:
    return (byte - 128) / 128.0


def _bound(column_end: int, columns: int, total: int, channels: int) -> int:
    """The sample index where column ``column_end - 1`` ends (whole frames)."""
    return (total // channels) * column_end // columns * channels


class PeaksCache:
    """The last few waveforms computed, by file, size and modification time (a file that
    changed is read again). Per process, and only a cache: losing it costs one read."""

    def __init__(self, size: int = 32):
        self.size = size
        self._kept: OrderedDict[tuple, Waveform] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, size: int, mtime_ns: int, columns: int) -> Waveform:
        """The waveform of ``path`` as it is now (its ``size`` and ``mtime_ns``), read once."""
        key = (str(path), size, mtime_ns, columns)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
        found = peaks(path, columns)
        with self._lock:
            self._kept[key] = found
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return found
