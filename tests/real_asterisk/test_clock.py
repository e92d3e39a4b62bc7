"""The measuring tools of tests/real_asterisk/test_following.py, on audio made here: the tone
detector (tests/real_asterisk/wav.py) and the caller's clock (tests/real_asterisk/clock.py) must
tell whose tone is where and place the caller's audio on its timeline, or the gap figures and
the audio checks measured on the real Asterisk would mean nothing. No Asterisk needed."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from tests.real_asterisk import clock, wav

AMPLITUDE = 7219  # Playtones' default (main/indications.c)


def caller(start: float, end: float) -> list[float]:
    """What the caller plays from ``start`` to ``end`` seconds on its timeline, as Asterisk's
    tone generator makes it: each 100-ms item two tones whose phase starts again at zero."""
    out = []
    for n in range(round(start * clock.RATE), round(end * clock.RATE)):
        step, within = divmod(n, round(clock.STEP * clock.RATE))
        frequency = clock.FREQUENCIES[clock.SEQUENCE[step % len(clock.SEQUENCE)]]
        out.append(AMPLITUDE * (math.sin(2 * math.pi * clock.CALLER_TONE * within / clock.RATE)
                                + math.sin(2 * math.pi * frequency * within / clock.RATE)))
    return out


def agent(frequency: float, seconds: float, phase: float = 0.3) -> list[float]:
    return [AMPLITUDE * math.sin(2 * math.pi * frequency * n / clock.RATE + phase)
            for n in range(round(seconds * clock.RATE))]


def mixed(*signals) -> list[int]:
    return [max(-32768, min(32767, round(sum(values)))) for values in zip(*signals)]


def test_the_sequence_has_every_ordered_pair_once():
    pairs = list(pairwise(clock.SEQUENCE + clock.SEQUENCE[:1]))
    assert len(pairs) == len(set(pairs)) == 18 * 17 and all(a != b for a, b in pairs)
    assert clock.PERIOD == pytest.approx(30.6)
    # Every chunk fits one AMI line (Asterisk reads 1,024 bytes at most), and together they are
    # the whole cycle.
    chunks = clock.playtones_data()
    assert all(len(f"Value: {c}") < 1000 for c in chunks)
    assert ",".join(chunks).split(",") == clock.playtones_items()


@pytest.mark.parametrize("start, end", [(1.234, 3.5), (0.0, 0.75), (12.05, 12.4)])
def test_a_file_is_placed_on_the_callers_timeline(start, end):
    (span,) = clock.heard(mixed(caller(start, end), agent(600, end - start)))

    assert span.start == pytest.approx(start, abs=0.02) and span.end == pytest.approx(end, abs=0.02)
    assert span.sample <= 0.02 * clock.RATE


@pytest.mark.parametrize("first, second, expected", [
    ((1.0, 2.0), (2.3, 4.0), 0.3),     # 300 ms of the caller never recorded
    ((1.0, 2.2), (2.0, 3.0), -0.2),    # 200 ms recorded in both
    ((5.0, 6.0), (6.0, 7.0), 0.0),
])
def test_the_audio_missing_between_two_files(first, second, expected):
    earlier, later = clock.heard(caller(*first)), clock.heard(caller(*second))

    assert clock.missing(earlier, later) == pytest.approx(expected, abs=0.03)
    assert clock.missing(earlier, []) is None


def test_a_muted_stretch_and_a_jump_are_holes_and_other_sounds_are_not_the_clock():
    # 1 s of the caller, 0.6 s of zeros (a muted MixMonitor) while the caller goes on, then
    # (MixMonitor's b option: nothing written while not bridged) a jump of 2 s.
    pcm = mixed(caller(1.0, 2.0) + [0] * 4800 + caller(2.6, 3.0) + caller(5.0, 6.0), agent(400, 3.0))
    noise = [round(AMPLITUDE * math.sin(n * n / 1000.0)) for n in range(8000)]  # a chirp, no clock

    spans = clock.heard(pcm)

    assert [(round(s.start, 1), round(s.end, 1)) for s in spans] == [(1.0, 2.0), (2.6, 3.0), (5.0, 6.0)]
    assert [(round(a, 1), round(b, 1)) for a, b in clock.holes(spans)] == [(2.0, 2.6), (3.0, 5.0)]
    assert clock.heard(agent(600, 1.0)) == [] and clock.heard(noise) == []


def test_tone_amplitudes_tell_the_agents_apart():
    pcm = mixed(caller(0.0, 1.0), agent(600, 1.0))
    windows = wav.tones(pcm, (400, 600, 800, clock.CALLER_TONE))

    assert len(windows) == 10
    for levels in windows:
        assert levels[600] == pytest.approx(AMPLITUDE, rel=0.02)
        assert levels[clock.CALLER_TONE] > 0.9 * AMPLITUDE
        assert levels[400] < 300 and levels[800] < 300
    # Another agent's tone in 30 ms of a 100-ms window reads about 30% of its level.
    partly = mixed(caller(0.0, 0.1), [0] * 560 + agent(400, 0.03))
    assert wav.tones(partly, (400,))[0][400] == pytest.approx(0.3 * AMPLITUDE, rel=0.1)
