"""The build helper, run on a stand-in source tree (a configure script and a Makefile that
install a file where Asterisk's would go): built once into the cache keyed by the tarball's
checksum, by one of two concurrent runs, and a failed build leaves nothing behind that a later
run would take for a build."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

import pytest

from tests.real_asterisk import build

CONFIGURE = """#!/bin/sh
echo "$@" >> "$COUNT_FILE"
sleep 0.5
echo "PREFIX=${1#--prefix=}" > config.mk
"""
MAKEFILE = """include config.mk
all:
\techo built > asterisk.bin
menuselect.makeopts:
\ttouch menuselect.makeopts
install:
\tmkdir -p $(DESTDIR)$(PREFIX)/sbin && cp asterisk.bin $(DESTDIR)$(PREFIX)/sbin/asterisk
"""


def source(folder: Path, *, broken: bool = False) -> Path:
    """A tarball of a stand-in source tree (``broken``: its make fails)."""
    tarball = folder / "asterisk-0.0.tar.gz"
    files = {"configure": CONFIGURE, "Makefile": MAKEFILE.replace("echo built", "false") if broken else MAKEFILE,
             "menuselect/menuselect": "#!/bin/sh\nexit 0\n"}
    with tarfile.open(tarball, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"asterisk-0.0/{name}")
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    return tarball


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COUNT_FILE", str(tmp_path / "configured"))
    return tmp_path / "cache" / "recording-agi"


def test_two_runs_at_once_build_once_into_the_cache_keyed_by_the_checksum(tmp_path, cache):
    tarball = source(tmp_path)
    results, errors = [], []

    def run():
        try:
            results.append(build.ensure_built(tarball, log=lambda message: None))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    again = build.ensure_built(tarball, log=lambda message: pytest.fail(f"built again: {message}"))

    prefix = cache / f"asterisk-{build.sha256_of(tarball)[:16]}"
    assert not errors and results == [prefix / "sbin" / "asterisk"] * 2 and again == results[0]
    assert (tmp_path / "configured").read_text().splitlines() == [
        f"--prefix={prefix} --without-pjproject-bundled --with-jansson"]
    assert results[0].read_text() == "built\n" and (prefix / build.MARKER).is_file()
    assert build.cached_binary(tarball) == results[0]
    assert sorted(p.name for p in cache.iterdir()) == [prefix.name, f"{prefix.name}.build.log", f"{prefix.name}.lock"]


def test_a_failed_build_leaves_no_cache_a_later_run_would_take(tmp_path, cache):
    tarball = source(tmp_path, broken=True)

    with pytest.raises(RuntimeError, match=r"Asterisk build step \['make', '-j\d'\] failed .*see .*build\.log"):
        build.ensure_built(tarball, log=lambda message: None)

    assert build.cached_binary(tarball) is None
    assert not any(".build-" in p.name for p in cache.iterdir())
    assert not (cache / f"asterisk-{build.sha256_of(tarball)[:16]}").exists()
