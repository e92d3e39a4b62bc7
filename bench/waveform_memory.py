"""What the waveform of a one-hour recording costs: memory (Python's allocations at their peak,
and the process's resident set before and after) and time, for the 8 kHz 16-bit WAV
MixMonitor writes (57.6 MB) and for a 16 kHz one (.wav16, 115 MB).

    .venv/bin/python bench/waveform_memory.py
"""

from __future__ import annotations

import math
import resource
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import resource, sys, time, tracemalloc
sys.path.insert(0, {root!r})
from pathlib import Path
from recording.storage.waveform import peaks
path = Path({path!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
started = time.perf_counter()
found = peaks(path, 600)
took = time.perf_counter() - started
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(found.seconds, len(found.columns), peak, before, after, took)
"""


def one_hour(path: Path, rate: int) -> None:
    """An hour of a 300 Hz tone whose loudness changes each second (a picture worth drawing)."""
    second = [struct.pack(f"<{rate}h", *(int(level * 32767 * math.sin(2 * math.pi * 300 * n / rate))
                                          for n in range(rate))) for level in (0.1, 0.4, 0.8, 0.0)]
    data = 3600 * rate * 2
    with open(path, "wb") as handle:
        handle.write(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, rate,
                                 rate * 2, 2, 16, b"data", data))
        for index in range(3600):
            handle.write(second[index % len(second)])


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        for rate, suffix in ((8000, ".wav"), (16000, ".wav16")):
            path = Path(folder) / f"hour{suffix}"
            one_hour(path, rate)
            out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT), path=str(path))],
                                 check=True, capture_output=True, text=True).stdout.split()
            seconds, columns, peak, before, after, took = out
            print(f"{path.stat().st_size / 1e6:6.1f} MB {suffix:7} {float(seconds):.0f} s of audio, {columns} columns: "
                  f"peak Python allocations {int(peak) / 1024:.0f} KiB, resident set {int(before) / 1024:.1f} -> "
                  f"{int(after) / 1024:.1f} MiB, {float(took):.2f} s")
    print(f"(this process, which wrote the files: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
