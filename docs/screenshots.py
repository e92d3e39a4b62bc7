"""Makes the README's pictures of the recordings pages: a service on a throwaway SQLite database
with a few demo calls (audio with a paused span, a held leg, a verified file), signed in as a
Recording Manager in headless Chromium.

    .venv/bin/python docs/screenshots.py            # writes docs/pages-list.png and docs/pages-leg.png
"""

from __future__ import annotations

import math
import random
import struct
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recording import apikey, credentials  # noqa: E402
from recording.domain import LegChange, NewLeg, utcnow  # noqa: E402
from recording.ops.config import Settings  # noqa: E402
from recording.storage import audio  # noqa: E402
from recording.storage.browse import Browse  # noqa: E402
from recording.storage.people import People  # noqa: E402
from recording.storage.store import Store  # noqa: E402
from tests.service_runner import RunningService  # noqa: E402

RATE = 8000


def speech(seconds: float, quiet: list[tuple[float, float]], seed: int) -> bytes:
    """Something that looks like two people talking, silent in the ``quiet`` spans."""
    rng = random.Random(seed)
    samples = []
    level = 0.0
    for block in range(int(seconds * 10)):
        at = block / 10
        target = 0.0 if any(a <= at < b for a, b in quiet) else rng.choice((0.05, 0.2, 0.35, 0.6, 0.75, 0.1))
        level = 0.6 * level + 0.4 * target
        pitch = rng.choice((140, 180, 220, 260))
        for n in range(RATE // 10):
            t = (block * (RATE // 10) + n) / RATE
            samples.append(int(32767 * level * (0.7 * math.sin(2 * math.pi * pitch * t)
                                                + 0.3 * math.sin(2 * math.pi * 3.1 * pitch * t))))
    data = struct.pack(f"<{len(samples)}h", *samples)
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, RATE, RATE * 2,
                       2, 16, b"data", len(data)) + data


def demo(store: Store, monitor: Path) -> str:
    """A morning of calls; returns the id of the leg the leg's page shows."""
    fred, ann = store.find_user("fred"), store.find_user("ann")
    start = datetime(2026, 11, 28, 9, 2, 11, tzinfo=timezone.utc)
    calls = [("CRM-2026-1187", fred, 95, [(31, 52)], True), ("CRM-2026-1188", ann, 42, [], False),
             ("CRM-2026-1190", fred, 128, [(40, 71)], False), ("<script>alert(1)</script>", None, 18, [], False),
             ("CRM-2026-1193", ann, 66, [(12, 20)], False), ("CRM-2026-1194", fred, 210, [], False)]
    shown = None
    for number, (tag, owner, seconds, pauses, held) in enumerate(calls):
        at = start + timedelta(minutes=7 * number + number * number)
        unique_id = f"1795825765.{40 + number}"
        leg_id = f"{number + 1:02d}" + "5f0c2a9e7d3b4c1a8e6f0b2d4c6a8e"[: 30]
        path = monitor / f"{unique_id}-1.wav"
        path.write_bytes(speech(seconds, pauses, number))
        store.commit([NewLeg(id=leg_id, unique_id=unique_id, leg=1, channel=f"PJSIP/{410 + number % 3}-0000001a",
                             extension=str(410 + number % 3), file=str(path), mixmonitor_id=None, tag=tag, agent=owner,
                             source="agi", state="recording", started_at=at)])
        for a, b in pauses:
            store.commit([LegChange(leg_id, unique_id, "pause", at + timedelta(seconds=a), by="dialplan",
                                    method="mute"),
                          LegChange(leg_id, unique_id, "resume", at + timedelta(seconds=b), by="dialplan")])
        store.commit([LegChange(leg_id, unique_id, "end", at + timedelta(seconds=seconds), state="ended",
                                by="hangup")])
        found = audio.digest(path)
        if number != 5:
            store.store_digest(leg_id, found.size, found.sha256, at + timedelta(seconds=seconds + 30))
        if number in (0, 2):
            Browse(store).record_checks([(leg_id, at + timedelta(days=1), "unchanged", None)])
        if held:
            store.set_hold(leg_id, held=True, by="boss", at=at + timedelta(hours=2), reason="complaint 2026-17")
        if number == 0:
            shown = leg_id
    from recording.storage.audit import Audit, Event

    audit = Audit(store)
    audit.record(Event("play", shown, "1795825765.40", "boss", "pages", "10.20.1.14",
                       at=start + timedelta(hours=1)),
                 Event("hold", shown, "1795825765.40", "boss", "pages", "10.20.1.14", "complaint 2026-17",
                       at=start + timedelta(hours=2)))
    return shown


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    folder = Path(tempfile.mkdtemp(prefix="recording-screenshots-"))
    monitor = folder / "monitor"
    monitor.mkdir()
    url = f"sqlite:///{folder}/demo.sqlite3"
    store = Store(url)
    store.upgrade()
    store.set_api_key_hash(apikey.hash_key("demo"))
    for login, groups in (("fred", []), ("ann", []), ("boss", ["Recording Manager"])):
        store.add_user(login, groups)
    People(store).set_password("boss", credentials.hash_password("boss-password"), utcnow())
    leg_id = demo(store, monitor)
    settings = Settings(database_url=url, journal_dir=str(folder / "journal"), agi_listen="127.0.0.1:0",
                        pages_listen="127.0.0.1:0", monitor_template=f"{monitor}/{{uniqueid}}-{{leg}}.wav")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                     "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                     "--window-size=1200,760", f"--user-data-dir={folder / 'chromium'}"):
        options.add_argument(argument)
    with RunningService(settings) as running:
        base = f"http://127.0.0.1:{running.app.pages_port}"
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"{base}/recordings/legs")
            driver.find_element(By.ID, "login").send_keys("boss")
            driver.find_element(By.ID, "password").send_keys("boss-password")
            driver.find_element(By.ID, "sign-in").click()
            driver.get(f"{base}/recordings/legs?since=2026-11-28&until=2026-11-28")
            driver.save_screenshot(str(ROOT / "docs" / "pages-list.png"))
            driver.set_window_size(1200, 1280)
            driver.get(f"{base}/recordings/legs/{leg_id}")
            driver.execute_script("document.getElementById('player').currentTime = 0;")
            driver.save_screenshot(str(ROOT / "docs" / "pages-leg.png"))
        finally:
            driver.quit()
    print("docs/pages-list.png and docs/pages-leg.png written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
