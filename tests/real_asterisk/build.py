"""Build Asterisk from its source tarball once, into a cache outside the checkout.

The cache is keyed by the tarball's sha256: ``${XDG_CACHE_HOME:-~/.cache}/recording-agi/
asterisk-<sha256[:16]>/``. A build is done in a temporary folder beside it and renamed into place
with its marker file already inside, so the cache folder either does not exist or is complete.
An ``fcntl`` lock beside it makes a second test run (or CI on the same machine) wait for the
first one's build instead of building again.

Runnable as a script: ``python -m tests.real_asterisk.build [tarball]`` prints the path of the
``asterisk`` binary (building it first when the cache does not have it yet).

The recipe is the one ``../shared/asterisk/src/README.md`` describes: ``configure
--without-pjproject-bundled --with-jansson`` (nothing is downloaded, no SIP stack), menuselect
without the sound packages (``make install`` would download them), ``make``, ``make install``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SOURCE_ENV = "RECORDING_TEST_ASTERISK_SOURCE"
MARKER = ".recording-agi-build.json"
CHECKOUT = Path(__file__).resolve().parents[2]
# NOTE: the menuselect categories whose install step downloads sound files.
SOUND_CATEGORIES = ("MENUSELECT_CORE_SOUNDS", "MENUSELECT_MOH", "MENUSELECT_EXTRA_SOUNDS")


def default_source() -> Path | None:
    """The tarball beside the checkout (``<checkout>/../shared/asterisk/src/*.tar.gz``, as CI and
    this machine lay it out), or None when there is none."""
    tarballs = sorted((CHECKOUT.parent / "shared" / "asterisk" / "src").glob("asterisk-*.tar.gz"))
    return tarballs[-1] if tarballs else None


def configured_source() -> Path | None:
    """The tarball to build: ``$RECORDING_TEST_ASTERISK_SOURCE`` when set, else the default one.
    None when there is neither."""
    given = os.environ.get(SOURCE_ENV)
    return Path(given).expanduser() if given else default_source()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recording-agi"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prefix_for(tarball: Path) -> Path:
    """The cache folder (the install prefix) of this tarball's build."""
    return cache_root() / f"asterisk-{sha256_of(tarball)[:16]}"


def binary_in(prefix: Path) -> Path:
    return prefix / "sbin" / "asterisk"


def cached_binary(tarball: Path) -> Path | None:
    """The cached build's ``asterisk`` binary, or None when this tarball has not been built."""
    prefix = prefix_for(tarball)
    return binary_in(prefix) if (prefix / MARKER).is_file() else None


def ensure_built(tarball: Path, log=None) -> Path:
    """The ``asterisk`` binary built from ``tarball``: the cached one, or a new build (a few
    minutes) when there is none yet. Concurrent callers wait for one build."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    tarball = tarball.resolve()
    if not tarball.is_file():
        raise FileNotFoundError(f"no Asterisk source at {tarball}")
    prefix = prefix_for(tarball)
    if (prefix / MARKER).is_file():
        return binary_in(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with _locked(prefix.with_name(prefix.name + ".lock")):
        if (prefix / MARKER).is_file():  # another run built it while we waited
            return binary_in(prefix)
        log(f"building Asterisk from {tarball} into {prefix} (a few minutes, once)")
        started = time.monotonic()
        _build(tarball, prefix, log)
        log(f"Asterisk built in {time.monotonic() - started:.0f} s: {binary_in(prefix)}")
    return binary_in(prefix)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(tarball: Path, prefix: Path, log) -> None:
    """Configure with the final prefix (Asterisk compiles its paths in), install with DESTDIR
    into a temporary folder, write the marker there, and rename the installed tree into place."""
    # NOTE: under the lock no other build runs: what an interrupted one left is garbage.
    for leftover in prefix.parent.glob(f"{prefix.name}.build-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    work = prefix.with_name(f"{prefix.name}.build-{os.getpid()}")
    if prefix.exists():  # NOTE: cannot be a finished build (the marker is checked under the lock)
        shutil.rmtree(prefix)
    work.mkdir()
    build_log = prefix.with_name(prefix.name + ".build.log")
    try:
        source = _unpack(tarball, work / "src")
        destdir = work / "dest"
        jobs = str(max(1, min(os.cpu_count() or 2, 4)))
        steps = [
            ["./configure", f"--prefix={prefix}", "--without-pjproject-bundled", "--with-jansson"],
            ["make", "menuselect.makeopts"],
            ["menuselect/menuselect"]
            + [arg for c in SOUND_CATEGORIES for arg in ("--disable-category", c)]
            + ["menuselect.makeopts"],
            ["make", f"-j{jobs}"],
            ["make", "install", f"DESTDIR={destdir}"],
        ]
        with open(build_log, "w") as out:
            for step in steps:
                log(f"  {' '.join(step[:2])} ...")
                done = subprocess.run(step, cwd=source, stdout=out, stderr=subprocess.STDOUT)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"Asterisk build step {step[:2]} failed ({done.returncode}); "
                        f"see {build_log}")
        installed = destdir / prefix.relative_to(prefix.anchor)
        marker = {"tarball": str(tarball), "sha256": sha256_of(tarball),
                  "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (installed / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        os.rename(installed, prefix)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(tarball: Path, into: Path) -> Path:
    """The source tree unpacked from the tarball (its one top-level folder)."""
    into.mkdir()
    with tarfile.open(tarball) as archive:
        archive.extractall(into, filter="tar")
    (top,) = list(into.iterdir())
    return top


def main(argv: list[str]) -> int:
    tarball = Path(argv[0]) if argv else configured_source()
    if tarball is None:
        print(f"no Asterisk source: give a tarball or set {SOURCE_ENV}", file=sys.stderr)
        return 2
    print(ensure_built(tarball))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
