"""The caller's clock: a way to read, from a recording alone, *when* (on the caller's own
timeline) each piece of the caller's audio in it was played.

The caller plays the caller's tone (1004 Hz, as Milliwatt) together with a second tone whose
frequency steps every 100 ms through :data:`SEQUENCE`, a cycle of 18 frequencies in which every
ordered pair of two different frequencies follows each other exactly once (an Eulerian circuit
of the complete directed graph on 18 nodes: 306 steps, 30.6 s before it repeats). So every
step boundary heard in a file says which boundary of the caller's timeline it is, and the audio
around it can be placed on that timeline to within a few milliseconds, whatever the file's
length, buffering or starting time. Comparing the spans two consecutive legs hold says how much
of the caller's audio is missing between them, or recorded twice (docs/transfers.md, "Measuring
the gap between legs").

``Playtones`` plays the whole cycle (its items, :func:`playtones_data`); Asterisk's tone
generator changes item at a frame boundary after the item's duration (main/indications.c), and
100 ms is five 20-ms frames, so every step is exactly 800 samples at 8 kHz.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from tests.real_asterisk.wav import tone_amplitude

CALLER_TONE = 1004
# 50 Hz off every multiple of 100 Hz: far from the agents' tones (400/600/800 Hz), their
# multiples and the caller's tone, and 100 Hz apart, which a 20-ms window tells apart exactly.
FREQUENCIES = tuple(1250 + 100 * k for k in range(18))
STEP = 0.1
RATE = 8000
# The analysis: 20-ms windows every 10 ms. A window holding one step's tone reads it at the
# tone's amplitude (Playtones' default, 7219) and every other clock frequency at 0.
WINDOW = 160
HOP = 80
# A window is read as one step when that step's frequency is this strong and this many times
# stronger than any other (a window across a step boundary holds two, and reads as neither).
LOUD = 2000.0
CLEAR = 3.0
# Windows read as the same stretch of the caller's timeline may be this far apart (the one or
# two windows across each boundary read as neither).
JOIN = 4 * HOP
# Boundaries whose placements differ by less than this belong to one continuous stretch.
SAME = 0.02


def _circuit(count: int) -> tuple[int, ...]:
    """An Eulerian circuit of the complete directed graph without loops on ``count`` nodes
    (Hierholzer), as the sequence of nodes visited: every ordered pair (a, b), a != b, follows
    each other exactly once, counting the wrap from the last to the first."""
    unused = {a: [b for b in range(count) if b != a] for a in range(count)}
    stack, circuit = [0], []
    while stack:
        node = stack[-1]
        if unused[node]:
            stack.append(unused[node].pop())
        else:
            circuit.append(stack.pop())
    circuit.reverse()
    return tuple(circuit[:-1])  # the last node is the first again


SEQUENCE = _circuit(len(FREQUENCIES))
PERIOD = len(SEQUENCE) * STEP
# (frequency index before, after) -> the number of the step that begins at that boundary.
_BOUNDARIES = {(SEQUENCE[i], SEQUENCE[(i + 1) % len(SEQUENCE)]): i + 1 for i in range(len(SEQUENCE))}
assert len(_BOUNDARIES) == len(SEQUENCE) == len(FREQUENCIES) * (len(FREQUENCIES) - 1)


def playtones_items() -> list[str]:
    """The items of ``Playtones()`` that play the clock: ``1004+<frequency>/100`` each."""
    return [f"{CALLER_TONE}+{FREQUENCIES[s]}/{round(STEP * 1000)}" for s in SEQUENCE]


def playtones_data(chunks: int = 6) -> list[str]:
    """The items in ``chunks`` comma-separated strings, each short enough for one AMI line
    (Asterisk reads at most 1,024 bytes a line), to be joined again in the dialplan."""
    items = playtones_items()
    size = -(-len(items) // chunks)
    return [",".join(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class Span:
    """A stretch of the caller's timeline (seconds since the clock began) that a file holds,
    from ``sample`` in the file on."""

    start: float
    end: float
    sample: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def step_of(chunk) -> int | None:
    """The index (in FREQUENCIES) of the clock step ``chunk`` holds, or None (silence, another
    sound, or two steps)."""
    levels = sorted(((tone_amplitude(chunk, f, RATE), i) for i, f in enumerate(FREQUENCIES)), reverse=True)
    (best, index), (second, _) = levels[0], levels[1]
    return index if best >= LOUD and best >= CLEAR * second else None


def heard(pcm) -> list[Span]:
    """The stretches of the caller's timeline that ``pcm`` (8 kHz) holds, in the file's order.
    Audio with no clock step boundary in it (less than a step) cannot be placed and is left
    out: the spans are what is known to be there."""
    decoded = [(i, s) for i in range(0, len(pcm) - WINDOW + 1, HOP) if (s := step_of(pcm[i:i + WINDOW])) is not None]
    boundaries = []  # (sample of a boundary, caller time minus file time there)
    for (i, a), (j, b) in zip(decoded, decoded[1:]):
        if a != b and j - i <= JOIN:
            sample = (i + j) / 2 + WINDOW / 2
            boundaries.append((sample, _BOUNDARIES[(a, b)] * STEP - sample / RATE))
    spans: list[Span] = []
    for first, last, offset in _stretches(boundaries):
        # The windows between the stretch's first and last boundary, and on either side as long
        # as they go on reading the steps this stretch predicts.
        inside = [i for i, s in decoded if first - JOIN <= i <= last and s == _expected(i, offset)]
        if not inside:
            continue
        before = _extend([(i, s) for i, s in reversed(decoded) if i < inside[0]], offset, inside[0])
        after = _extend([(i, s) for i, s in decoded if i > inside[-1]], offset, inside[-1])
        run: list[int] = []
        for i in sorted(before + inside + after):
            if run and i - run[-1] > JOIN:
                spans.append(_span(run, offset))
                run = []
            run.append(i)
        spans.append(_span(run, offset))
    return sorted(spans, key=lambda span: span.sample)


def _stretches(boundaries: list[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """(first boundary's sample, last boundary's sample, offset) of each continuous stretch:
    boundaries in a row whose offsets agree (a misread boundary stands alone and is dropped
    unless nothing else was heard)."""
    groups: list[list[tuple[float, float]]] = []
    for sample, offset in boundaries:
        if groups and abs(offset - statistics.median(o for _, o in groups[-1])) <= SAME:
            groups[-1].append((sample, offset))
        else:
            groups.append([(sample, offset)])
    kept = [g for g in groups if len(g) > 1] or groups
    return [(g[0][0], g[-1][0], statistics.median(o for _, o in g)) for g in kept]


def _extend(windows: list[tuple[int, int]], offset: float, edge: int) -> list[int]:
    """The windows of ``windows`` (in order away from ``edge``) that go on matching."""
    taken = []
    for i, s in windows:
        if abs(i - edge) > JOIN or s != _expected(i, offset):
            break
        taken.append(i)
        edge = i
    return taken


def _expected(window: int, offset: float) -> int:
    """The step the caller played at the middle of the window starting at sample ``window``."""
    return SEQUENCE[int(((window + WINDOW / 2) / RATE + offset) // STEP) % len(SEQUENCE)]


def _span(run: list[int], offset: float) -> Span:
    return Span(run[0] / RATE + offset, (run[-1] + WINDOW) / RATE + offset, run[0])


def missing(earlier: list[Span], later: list[Span]) -> float | None:
    """Seconds of the caller's timeline between the end of what ``earlier`` holds and the start
    of what ``later`` holds: positive is audio missing, negative audio recorded in both. None
    when either holds nothing that can be placed."""
    if not earlier or not later:
        return None
    return min(s.start for s in later) - max(s.end for s in earlier)


def holes(spans: list[Span], shortest: float = 0.001) -> list[tuple[float, float]]:
    """The stretches of the caller's timeline (of at least ``shortest`` seconds), between the
    first and the last one heard, that none of ``spans`` holds."""
    found, reached = [], None
    for span in sorted(spans, key=lambda s: s.start):
        if reached is not None and span.start > reached + shortest:
            found.append((reached, span.start))
        reached = span.end if reached is None else max(reached, span.end)
    return found
