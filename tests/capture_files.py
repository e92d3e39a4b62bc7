"""Reading the captures in ``tests/captures`` (a copy of ``../shared/asterisk``) for the tests
that are checked against them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from recording.asterisk.ami import parse_message

CAPTURES = Path(__file__).resolve().parent / "captures"


def captured_msets() -> list[tuple[str, dict[str, str]]]:
    """Each whole ``EXEC MSet`` command line of fastagi-mset-ext390 (as sent, without ``>> ``)
    with the values Asterisk then gave back for its variables (``GET VARIABLE``), in order."""
    found: list[tuple[str, dict[str, str]]] = []
    lines = (CAPTURES / "fastagi-mset-ext390.txt").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if not line.startswith(">> EXEC MSet ") or line.endswith(" ..."):
            continue
        values = {}
        for ask, answer in zip(lines[index + 2::2], lines[index + 3::2]):
            if not ask.startswith(">> GET VARIABLE "):
                break
            values[ask.removeprefix(">> GET VARIABLE ")] = answer.removeprefix("<< 200 result=1 (")[:-1]
        found.append((line.removeprefix(">> "), values))
    return found


def mset_values() -> list[tuple[str, str]]:
    """fastagi-mset-values.jsonl: every value sent through MSet and what Asterisk stored."""
    with open(CAPTURES / "fastagi-mset-values.jsonl", encoding="utf-8") as rows:
        return [(row["sent"], row["stored"]) for row in map(json.loads, rows)]


# --- the transfer captures (tests/captures/transfers, a copy of ../shared/asterisk/transfers) ---

TRANSFERS = CAPTURES / "transfers"
# Every capture of that folder by its id (``ami-transfer-<id>.txt``), in the README's order.
TRANSFER_IDS = ("1", "1b", "2", "3", "3x", "3n", "4a", "4b", "4c", "4d", "4e", "5", "6")
_TIME = re.compile(r"^# \+(\d+\.\d+)s(?: (.*))?$")


def transfer_capture_path(capture_id: str) -> Path:
    """The file of capture ``capture_id`` (``"3"`` gives ``ami-transfer-3-atxfer.txt``)."""
    found = sorted(p for p in TRANSFERS.glob(f"ami-transfer-{capture_id}-*.txt") if not p.name.endswith(".log.txt"))
    if len(found) != 1:
        raise FileNotFoundError(f"no single capture ami-transfer-{capture_id}-*.txt in {TRANSFERS}")
    return found[0]


def read_transfer_capture(capture_id: str) -> list[tuple[float, dict[str, str]]]:
    """Every AMI message of a transfer capture as ``(seconds after the scenario start, message)``,
    in arrival order: events and the answers to the harness's actions alike, each parsed as the
    AMI client parses what it receives (recording.asterisk.ami.parse_message), so a test feeds
    the tracker exactly the dicts it gets live. The time is the ``# +S.SSSs`` line before it."""
    return parse_transfer_capture(transfer_capture_path(capture_id).read_text(encoding="utf-8"))


def parse_transfer_capture(text: str) -> list[tuple[float, dict[str, str]]]:
    """The messages of a capture's text (see :func:`read_transfer_capture`). A message is a block
    of lines not starting with ``#``, ended by an empty line or a ``#`` line; a block with no
    time line before it is an error (the format always gives one)."""
    messages: list[tuple[float, dict[str, str]]] = []
    when: float | None = None
    block: list[bytes] = []

    def flush() -> None:
        if not block:
            return
        if when is None:
            raise ValueError(f"AMI message with no '# +S.SSSs' time before it: {block[0]!r}")
        messages.append((when, parse_message(block)))
        block.clear()

    for line in text.splitlines():
        if line.startswith("#"):
            flush()
            stamp = _TIME.match(line)
            if stamp and stamp.group(2) is None:
                when = float(stamp.group(1))
        elif not line.strip():
            flush()
        else:
            block.append(line.encode("utf-8"))
    flush()
    return messages


def transfer_events(capture_id: str) -> list[tuple[float, dict[str, str]]]:
    """The events only (``Event:``), as the client hands them to its subscribers: without the
    ones that answer the harness's own actions (``Status``, ... carrying its ``ActionID``), which
    another AMI session never receives."""
    return events_only(read_transfer_capture(capture_id))


def events_only(messages: list[tuple[float, dict[str, str]]]) -> list[tuple[float, dict[str, str]]]:
    return [(t, m) for t, m in messages if "Event" in m and "ActionID" not in m]


PICKUP = CAPTURES / "pickup" / "ami-pickup-local.txt"


def pickup_capture() -> list[tuple[float, dict[str, str]]]:
    """Every message of tests/captures/pickup/ami-pickup-local.txt (same format), the list
    answers (CoreShowChannels, BridgeList, BridgeInfo) included."""
    return parse_transfer_capture(PICKUP.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ConciseSnapshot:
    """One ``core show channels concise`` probe of a capture: when it ran, and each channel's
    fields by name (Channel, Context, Exten, Priority, State, Application, Data, CallerID,
    AccountCode, PeerAccount, AMAFlags, Duration, BridgeID, Uniqueid)."""

    at: float
    rows: tuple[dict[str, str], ...]


CONCISE_FIELDS = ("Channel", "Context", "Exten", "Priority", "State", "Application", "Data", "CallerID",
                  "AccountCode", "PeerAccount", "AMAFlags", "Duration", "BridgeID", "Uniqueid")


def concise_snapshots(capture_id: str) -> list[ConciseSnapshot]:
    """The capture's ``core show channels concise`` outputs, in time order."""
    snapshots = []
    lines = transfer_capture_path(capture_id).read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        stamp = _TIME.match(line)
        if not stamp or not (stamp.group(2) or "").startswith('$ asterisk -rx "core show channels concise"'):
            continue
        rows = []
        for row in lines[index + 1:]:
            if not row.startswith("#     "):
                break
            if row == "#     (no capx channels)":
                break
            values = row.removeprefix("#     ").split("!")
            if len(values) != len(CONCISE_FIELDS):
                raise ValueError(f"concise line with {len(values)} fields: {row!r}")
            rows.append(dict(zip(CONCISE_FIELDS, values)))
        snapshots.append(ConciseSnapshot(float(stamp.group(1)), tuple(rows)))
    return snapshots


def capture_channels(capture_id: str) -> dict[str, tuple[str, str]]:
    """The header's table of the capture's channels: name -> (Uniqueid, Linkedid) (the concise
    listing has no Linkedid; AMI's CoreShowChannel has)."""
    table: dict[str, tuple[str, str]] = {}
    for line in transfer_capture_path(capture_id).read_text(encoding="utf-8").splitlines():
        if line.startswith("# ===="):
            break
        cells = [c.strip() for c in line.removeprefix("#").split("|")]
        if len(cells) == 5 and cells[0].startswith("Local/") and re.fullmatch(r"[\d.]+", cells[1]):
            table[cells[0]] = (cells[1], cells[2])
    return table
