"""Where a leg's file is, as this host sees it: the monitor directory at the start of the
template, a share mounted elsewhere, and the paths the service will not touch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from recording.storage import audio
from recording.storage.audio import MonitorDirectory, template_root


@pytest.mark.parametrize("template,root", [
    ("/var/spool/asterisk/monitor/{date:%Y/%m/%d}/{uniqueid}-{leg}.wav", "/var/spool/asterisk/monitor"),
    ("/rec/call-{uniqueid}.wav", "/rec"),
    ("/rec/{extension}/{uniqueid}.wav", "/rec"),
    ("/{uniqueid}.wav", "/"),
    ("/rec//x/{uniqueid}.wav", "/rec/x"),
    ("acc-{uniqueid}.wav", ""),
    ("sub/{uniqueid}.wav", ""),
])
def test_the_monitor_directory_is_the_fixed_folder_before_the_first_field(template, root):
    assert template_root(template) == root


def test_files_map_to_this_host_and_only_inside_the_monitor_directory(tmp_path):
    same = MonitorDirectory("/var/spool/asterisk/monitor/{uniqueid}.wav")
    shared = MonitorDirectory("/var/spool/asterisk/monitor/{uniqueid}.wav", str(tmp_path / "mnt"))
    relative = MonitorDirectory("{uniqueid}.wav", str(tmp_path / "mnt"))

    inside = "/var/spool/asterisk/monitor/2026/1.3-1.wav"
    assert same.local(inside) == Path(inside)
    assert shared.local("/var/spool/asterisk/monitor/2026/1.3-1.wav") == tmp_path / "mnt/2026/1.3-1.wav"
    assert relative.local("1.3-1.wav") == tmp_path / "mnt/1.3-1.wav"
    for outside in ("/etc/passwd", "/var/spool/asterisk/monitor/../../../etc/passwd",
                    "/var/spool/asterisk/monitorx/a", "/var/spool/asterisk/monitor", "relative.wav"):
        assert shared.local(outside) is None, outside
    assert relative.local("/abs/1.wav") is None and relative.local("../1.wav") is None
    assert MonitorDirectory("{uniqueid}.wav").local("1.wav") is None


def test_what_counts_as_not_seeing_the_files(tmp_path):
    def problem(folder):
        return MonitorDirectory(f"{folder}/{{uniqueid}}.wav").problem()

    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "1.3-1.wav").write_bytes(b"RIFF")

    assert "does not exist on this host" in problem(tmp_path / "absent")
    assert "is not a directory" in problem(tmp_path / "afile")
    assert "is empty on this host (a share not mounted?)" in problem(tmp_path / "empty")
    assert problem(tmp_path / "live") is None
    assert "RECORDING_MONITOR_MOUNT" in MonitorDirectory("{uniqueid}.wav").problem()


def test_a_look_tells_present_gone_and_what_is_not_served(tmp_path):
    monitor = MonitorDirectory(f"{tmp_path}/m/{{uniqueid}}.wav")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.wav").write_bytes(b"RIFF" + bytes(40))
    (tmp_path / "secret").write_text("not a recording")
    (tmp_path / "m" / "link.wav").symlink_to(tmp_path / "secret")
    (tmp_path / "m" / "dir.wav").mkdir()

    present = monitor.look(f"{tmp_path}/m/a.wav")
    assert (present.status, present.path, present.size) == ("present", tmp_path / "m/a.wav", 44)
    assert monitor.look(f"{tmp_path}/m/b.wav").status == "gone"
    for unserved in ("link.wav", "dir.wav"):
        look = monitor.look(f"{tmp_path}/m/{unserved}")
        assert look.status == "unseen" and "not a plain file inside the monitor directory" in look.why
    assert "is not inside the monitor directory" in monitor.look("/etc/passwd").why


def test_digest_and_delete(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF" + bytes(1 << 21))

    found = audio.digest(path)

    assert (found.size, found.sha256) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    assert audio.delete(path) is True and not path.exists()
    assert audio.delete(path) is False


@pytest.mark.parametrize("name,kind", [("a.wav", "audio/wav"), ("a.WAV", "audio/wav"), ("a.gsm", "audio/x-gsm"),
                                       ("a.mp3", "audio/mpeg"), ("a.xyz", "application/octet-stream")])
def test_content_types_by_extension(name, kind):
    assert audio.content_type(name) == kind
