"""The waveform of a recording: the lowest and highest sample per column, read in chunks (an
hour costs a few hundred kilobytes of memory, not the file), the formats that have one, and
where the paused spans fall in the picture."""

from __future__ import annotations

import math
import struct
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest

from recording.domain import LegView, Pause
from recording.doors.pages import svg
from recording.storage.waveform import NoWaveform, PeaksCache, peaks

RATE = 8000


def wav(path, frames: bytes, *, size: int | None = None, rate: int = RATE, bits: int = 16, tag: int = 1,
        extra_chunk: bool = False):
    data = len(frames) if size is None else size
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * bits // 8, bits // 8, bits)
    chunks = b"fmt " + struct.pack("<I", 16) + fmt
    if extra_chunk:
        chunks += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # an odd size: padded
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks) + 8 + data) + b"WAVE" + chunks + b"data"
                     + struct.pack("<I", data) + frames)
    return path


def tone(seconds: float, amplitude: float) -> bytes:
    return b"".join(struct.pack("<h", int(amplitude * 32767 * math.sin(2 * math.pi * 440 * n / RATE)))
                    for n in range(int(seconds * RATE)))


def test_silence_then_a_tone_then_silence(tmp_path):
    path = wav(tmp_path / "a.wav", bytes(2 * RATE) + tone(1.0, 0.5) + bytes(2 * RATE), extra_chunk=True)

    found = peaks(path, columns=3)

    assert found.seconds == 3.0 and len(found.columns) == 3
    (low0, high0), (low1, high1), (low2, high2) = found.columns
    assert low0 == high0 == 0.0 == low2 == high2
    assert -0.52 < low1 < -0.45 and 0.45 < high1 < 0.52


def test_a_file_still_open_counts_what_it_holds_and_sln_is_read_bare(tmp_path):
    unsized = wav(tmp_path / "open.wav", tone(0.5, 0.9), size=0)
    bare = tmp_path / "call.sln"
    bare.write_bytes(tone(0.25, 0.9))

    assert peaks(unsized, 10).seconds == 0.5 and len(peaks(unsized, 10).columns) == 10
    assert peaks(bare, 5).seconds == 0.25 and max(high for _, high in peaks(bare, 5).columns) > 0.85
    assert peaks(wav(tmp_path / "empty.wav", b""), 10).columns == ()


@pytest.mark.parametrize("name, content, sentence", [
    ("call.gsm", b"\xd8" * 33, ".gsm recordings have no waveform here"),
    ("call.wav", b"not a wav file at all", "not a RIFF WAVE file"),
])
def test_formats_without_a_waveform_say_so(tmp_path, name, content, sentence):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(NoWaveform, match=sentence):
        peaks(tmp_path / name)


def test_mu_law_in_a_wav_has_no_waveform_here(tmp_path):
    with pytest.raises(NoWaveform, match="WAV format 7 with 8-bit samples"):
        peaks(wav(tmp_path / "u.wav", b"\xff" * 100, bits=8, tag=7))


def test_an_hour_costs_a_few_hundred_kilobytes_of_memory(tmp_path):
    path = tmp_path / "hour.wav"
    minute = tone(1.0, 0.7) * 60
    with open(path, "wb") as handle:
        handle.write(wav(tmp_path / "head.wav", b"", size=3600 * RATE * 2).read_bytes())
        for _ in range(60):
            handle.write(minute)

    tracemalloc.start()
    try:
        found = PeaksCache().get(path, path.stat().st_size, path.stat().st_mtime_ns, 600)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert found.seconds == 3600.0 and len(found.columns) == 600
    assert all(0.65 < high < 0.72 for _, high in found.columns)
    # The file is 57.6 MB; the waveform holds one 64 KiB chunk and its high bytes at a time.
    assert peak < 1_000_000, f"{peak} bytes at the peak"


def leg_with(pauses, start, end) -> LegView:
    return LegView(id="a" * 32, unique_id="1.1", leg=1, call_record_id=1, tag=None, external_reference=None,
                   owner=None, ownership="DEFAULT", file="/x.wav", channel="PJSIP/1-1", extension="1",
                   mixmonitor_id=None, source="agi", state="ended", start=start, end=end, pauses=tuple(pauses))


def test_paused_spans_where_the_file_has_them():
    t0 = datetime(2026, 11, 28, 9, tzinfo=timezone.utc)
    at = lambda seconds: t0 + timedelta(seconds=seconds)  # noqa: E731
    leg = leg_with([Pause(at(10), at(20), "mute"), Pause(at(30), at(40), "restart"), Pause(at(50), at(55), "mute")],
                   t0, at(70))

    found = svg.spans(leg, 60.0)  # the file lacks the 10 s stopped by the restart pause

    assert [(s.start, s.end, s.method) for s in found] == [(10.0, 20.0, "mute"), (30.0, 30.0, "restart"),
                                                         (40.0, 45.0, "mute")]
    assert found[1].title == "paused 0:00:30 for 0:00:10 (restart, not in the file)"
    picture = svg.picture(None, leg, "a <note>")
    assert "a &lt;note&gt;" in picture and "<note>" not in picture
