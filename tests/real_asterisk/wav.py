"""What a MixMonitor WAV file holds, read with the standard library only: its header as written
(the sizes Asterisk put there), its audio as the file's bytes say (while MixMonitor still writes,
the header's sizes are not yet filled in), the loudness of each 100 ms of it, so a test can
tell tone from silence (a muted span) and a short file from a complete one, and the strength of
given frequencies in each window, so a test can tell whose tone is in which part of a file."""

from __future__ import annotations

import math
import operator
import struct
import sys
from array import array
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HEADER_BYTES = 44
# Below this RMS (of 16-bit samples) a window counts as silence; a Milliwatt or Playtones tone
# is thousands, and a muted MixMonitor writes exact zeros.
SILENCE = 50.0


@dataclass(frozen=True)
class WavHeader:
    """The canonical 44-byte header as it is on disk. ``riff_size`` and ``data_size`` are what
    Asterisk wrote (0 while it records); ``file_size`` is the file's real length."""

    riff_size: int
    channels: int
    rate: int
    bits: int
    data_size: int
    file_size: int

    @property
    def complete(self) -> bool:
        """The header's sizes say exactly what the file holds (format_wav wrote them at close)."""
        return self.data_size == self.file_size - HEADER_BYTES and self.riff_size == self.file_size - 8

    @property
    def seconds(self) -> float:
        """The audio the file holds, by its length."""
        return (self.file_size - HEADER_BYTES) / (self.rate * self.channels * self.bits // 8)


def header(path: Path) -> WavHeader:
    """The header of ``path``; ValueError if it is not a 44-byte PCM WAV header."""
    data = Path(path).read_bytes()[:HEADER_BYTES]
    if len(data) < HEADER_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than a WAV header")
    riff, riff_size, wave, fmt, fmt_size, audio_format, channels, rate, _, _, bits, data_tag, data_size = \
        struct.unpack("<4sI4s4sIHHIIHH4sI", data)
    if (riff, wave, fmt, data_tag, fmt_size, audio_format) != (b"RIFF", b"WAVE", b"fmt ", b"data", 16, 1):
        raise ValueError(f"{path}: not a canonical PCM WAV header: {data!r}")
    return WavHeader(riff_size, channels, rate, bits, data_size, Path(path).stat().st_size)


def samples(path: Path) -> array:
    """Every 16-bit sample after the header, by the file's length (not the header's)."""
    raw = Path(path).read_bytes()[HEADER_BYTES:]
    pcm = array("h")
    pcm.frombytes(raw[: len(raw) // 2 * 2])
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm


def loudness(path: Path, window: float = 0.1) -> list[float]:
    """The RMS of each ``window`` seconds of audio (8 kHz mono, as MixMonitor writes .wav)."""
    rate = header(path).rate
    pcm = samples(path)
    size = int(rate * window)
    return [_rms(pcm[i:i + size]) for i in range(0, len(pcm) - size + 1, size)]


def _rms(chunk) -> float:
    return math.sqrt(sum(s * s for s in chunk) / len(chunk)) if len(chunk) else 0.0


def silent_spans(levels: list[float], window: float = 0.1, floor: float = SILENCE) -> list[tuple[float, float]]:
    """The spans (start, end, in seconds) where ``levels`` stay below ``floor``."""
    spans, start = [], None
    for index, level in enumerate(levels + [floor + 1]):
        if level < floor and start is None:
            start = index
        elif level >= floor and start is not None:
            spans.append((start * window, index * window))
            start = None
    return spans


def longest_silence(path: Path) -> float:
    """The longest silent stretch of ``path``, in seconds (0 if none)."""
    return max((end - start for start, end in silent_spans(loudness(path))), default=0.0)


# -- tones -------------------------------------------------------------------------------------

@lru_cache(maxsize=256)
def _basis(frequency: float, rate: int, size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    step = 2 * math.pi * frequency / rate
    return (tuple(math.cos(step * n) for n in range(size)), tuple(math.sin(step * n) for n in range(size)))


def tone_amplitude(chunk, frequency: float, rate: int = 8000) -> float:
    """The amplitude (in sample units) of ``frequency`` in ``chunk``: the magnitude of that one
    DFT bin, which is what the Goertzel algorithm computes, taken here as two dot products (they
    run at C speed in the standard library, a sample-by-sample Goertzel loop would not). A pure
    tone of amplitude A, a whole number of cycles in the chunk, reads A; a tone k/len(chunk)
    cycles per sample away reads 0 for every whole k != 0 (a rectangular window's nulls)."""
    size = len(chunk)
    if not size:
        return 0.0
    cos, sin = _basis(float(frequency), rate, size)
    real = sum(map(operator.mul, chunk, cos))
    imaginary = sum(map(operator.mul, chunk, sin))
    return 2.0 * math.hypot(real, imaginary) / size


def tones(pcm, frequencies, rate: int = 8000, window: float = 0.1,
          hop: float | None = None) -> list[dict[float, float]]:
    """For each ``window`` seconds of ``pcm`` (every ``hop`` seconds, default ``window``), the
    amplitude of each of ``frequencies`` in it."""
    size, step = int(rate * window), int(rate * (hop or window))
    return [{f: tone_amplitude(pcm[i:i + size], f, rate) for f in frequencies}
            for i in range(0, len(pcm) - size + 1, step)]


def write(path: Path, pcm, rate: int = 8000) -> None:
    """A canonical 16-bit mono PCM WAV of ``pcm`` (for the tests of these helpers)."""
    data = array("h", pcm)
    if sys.byteorder == "big":
        data.byteswap()
    raw = data.tobytes()
    Path(path).write_bytes(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(raw), b"WAVE", b"fmt ", 16, 1, 1,
                                       rate, rate * 2, 2, 16, b"data", len(raw)) + raw)
