"""What the recordings pages' tests share: users with passwords, a service serving the pages
beside a fake Asterisk whose MixMonitor writes real files, and legs made straight in the store
(for lists longer than a fake call is worth)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from functools import cache

from recording import credentials
from recording.domain import NewLeg, UserRef, utcnow
from recording.storage.people import People

PASSWORDS = {"fred": "fred-password-1", "ann": "ann-password-1", "boss": "boss-password-1"}


@cache
def _hash(password: str) -> str:
    # argon2 costs ~0.1 s and 64 MiB: once per password for the whole run.
    return credentials.hash_password(password)


def give_passwords(store, logins=("fred", "ann", "boss")) -> None:
    people = People(store)
    for login in logins:
        people.set_password(login, _hash(PASSWORDS[login]), utcnow())


def stored_leg(store, *, agent: UserRef | None = None, tag: str | None = "T", extension: str = "410",
               started: datetime | None = None, state: str = "ended", unique_id: str | None = None) -> str:
    """A leg written as the service writes one (ended unless ``state`` says otherwise); its id."""
    started = started or datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc)
    leg_id = uuid.uuid4().hex
    unique_id = unique_id or f"1795825765.{uuid.uuid4().int % 10**8}"
    store.commit([NewLeg(
        id=leg_id, unique_id=unique_id, leg=1, channel=f"PJSIP/{extension}-0000001a", extension=extension,
        file=f"/var/spool/asterisk/monitor/{unique_id}-1.wav", mixmonitor_id="0x7f01", tag=tag, agent=agent,
        source="agi", state=state, started_at=started,
        ended_at=started + timedelta(seconds=30) if state not in ("recording", "paused") else None,
    )])
    return leg_id
