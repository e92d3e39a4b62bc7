"""The waveform picture of a leg: an SVG of the lowest and highest sample per column, with the
paused spans shaded (a card number was read out there) and their times in a tooltip. Numbers
and escaped text only: nothing of a call reaches it unescaped.

Where a pause falls in the file: a pause by muting (MixMonitorMute) keeps the file's timeline,
so it is the span from the pause to the resume; a pause by stopping MixMonitor (without AMI)
leaves nothing in the file, so it is a cut (a line) where the recording went on, and later
spans move back by its length. Times are the wall clock's from the leg's start; the file may
begin a little later (MixMonitor's option b records only once the call is bridged).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from ...domain import LegView
from ...storage.waveform import Waveform

WIDTH, HEIGHT = 600, 100
WAVE, PAUSED, CUT = "#2b5f8a", "#f2b134", "#c0392b"


@dataclass(frozen=True)
class Span:
    """A paused span in the file, seconds from its start; ``start == end`` for a cut."""

    start: float
    end: float
    method: str
    title: str


def clock(seconds: float) -> str:
    """h:mm:ss of a number of seconds."""
    whole = int(round(max(0.0, seconds)))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def spans(leg: LegView, seconds: float) -> list[Span]:
    """The leg's pauses as spans of its file (see the module), within 0..``seconds``."""
    found, shift = [], 0.0
    for pause in leg.pauses:
        resumed = pause.resumed_at or leg.end or pause.paused_at
        begin = (pause.paused_at - leg.start).total_seconds() - shift
        length = max(0.0, (resumed - pause.paused_at).total_seconds())
        title = (f"paused {clock(begin)} for {clock(length)} ({pause.method}"
                 f"{', not in the file' if pause.method == 'restart' else ''})")
        if pause.method == "restart":
            shift += length
            length = 0.0
        start = min(max(0.0, begin), seconds)
        found.append(Span(start, min(seconds, start + length), pause.method, title))
    return found


def picture(waveform: Waveform | None, leg: LegView, note: str = "") -> str:
    """The SVG document: the waveform (or ``note`` when there is none) and the paused spans."""
    seconds = waveform.seconds if waveform else 0.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" preserveAspectRatio="none" role="img">',
             f"<title>waveform of leg {escape(leg.id)}, {clock(seconds)}</title>",
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#f7f9fb"/>']
    if waveform and waveform.columns and seconds > 0:
        for span in spans(leg, seconds):
            x = span.start / seconds * WIDTH
            if span.end > span.start:
                width = max(1.0, (span.end - span.start) / seconds * WIDTH)
                parts.append(f'<rect class="paused" x="{x:.1f}" y="0" width="{width:.1f}" height="{HEIGHT}" '
                             f'fill="{PAUSED}" fill-opacity="0.45"><title>{escape(span.title)}</title></rect>')
            else:
                parts.append(f'<rect class="cut" x="{max(0.0, x - 1):.1f}" y="0" width="2" height="{HEIGHT}" '
                             f'fill="{CUT}"><title>{escape(span.title)}</title></rect>')
        step = WIDTH / len(waveform.columns)
        middle = HEIGHT / 2
        path = []
        for index, (low, high) in enumerate(waveform.columns):
            x = (index + 0.5) * step
            top, bottom = middle - high * middle, middle - low * middle
            if bottom - top < 1:
                top, bottom = top - 0.5, bottom + 0.5
            path.append(f"M{x:.1f} {top:.1f}V{bottom:.1f}")
        parts.append(f'<path d="{"".join(path)}" stroke="{WAVE}" stroke-width="{max(1.0, step * 0.8):.2f}" '
                     'fill="none"/>')
    else:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-family="sans-serif" '
                     f'font-size="12" fill="#555">{escape(note or "no audio")}</text>')
    parts.append("</svg>")
    return "".join(parts)
