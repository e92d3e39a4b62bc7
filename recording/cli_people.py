"""The commands about people and what they did: ``users passwd`` and ``users token`` (their
credentials for the recordings pages and the HTTP API), and ``audit`` (who played, downloaded,
held, released or purged which leg). cli.py registers them."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import datetime, timezone

from . import credentials
from .domain import utcnow
from .errors import ConfigError
from .ops.config import Settings
from .storage.store import Store


def add_user_commands(users) -> None:
    """``users passwd`` and ``users token`` under the ``users`` subcommands."""
    passwd = users.add_parser("passwd", help="set a user's password for the recordings pages (ends their sessions)")
    passwd.add_argument("login")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin instead of asking twice")
    passwd.set_defaults(command=users_passwd)
    token = users.add_parser("token", help="make a user's own token for the HTTP API (printed once), list them, "
                             "or revoke them")
    token.add_argument("login")
    token.add_argument("--label", help="what the token is for, e.g. the CRM's name (shown by --list)")
    token.add_argument("--list", action="store_true", help="list the user's tokens (never the tokens themselves)")
    token.add_argument("--revoke", metavar="ID", help="revoke the token with that id (--list shows it), or 'all'")
    token.set_defaults(command=users_token)


def add_audit_command(commands) -> None:
    audit = commands.add_parser("audit", help="who played, downloaded, held, released or purged which leg")
    audit.add_argument("--leg", metavar="LEG", help="only this leg (its id)")
    audit.add_argument("--user", metavar="LOGIN", help="only what this user (or system user) did")
    audit.add_argument("--since", metavar="DATE", help="only from DATE on (2026-11-01, or a time; UTC unless it "
                       "says otherwise)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    audit.set_defaults(command=audit_list)


def parse_time(text: str, name: str) -> datetime:
    """A date (2026-11-01) or a time (2026-11-01T09:30), UTC unless it says otherwise."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{name} {text!r} is not a date (2026-11-01) or a time (2026-11-01T09:30)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _people(settings: Settings):
    from .storage.people import People

    return People(Store(settings.database_url))


def users_passwd(args, settings: Settings) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"New password for {args.login}: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ; nothing was changed")
    try:
        hashed = credentials.hash_password(password)
    except ValueError as exc:
        raise ConfigError(f"{exc}; nothing was changed") from None
    user, ended = _people(settings).set_password(args.login, hashed, utcnow())
    print(f"password of {user.login} set (stored as an argon2id hash)"
          + (f"; {ended} session{'s' if ended != 1 else ''} ended" if ended else ""))
    return 0


def users_token(args, settings: Settings) -> int:
    people = _people(settings)
    if args.list:
        tokens = people.tokens(args.login)
        for token in tokens:
            state = f"revoked {token.revoked_at.isoformat(timespec='seconds')}" if token.revoked_at else "in use"
            used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never"
            print(f"{token.id}\t{state}\tmade {token.created_at.isoformat(timespec='seconds')}\tlast used {used}"
                  f"\t{token.label or ''}")
        if not tokens:
            print(f"{args.login} has no tokens", file=sys.stderr)
        return 0
    if args.revoke is not None:
        which = None if args.revoke == "all" else _token_id(args.revoke)
        revoked = people.revoke_tokens(args.login, which, utcnow())
        if which is not None and not revoked:
            print(f"recording-agi: {args.login} has no token {which} in use", file=sys.stderr)
            return 1
        print(f"{revoked} token{'s' if revoked != 1 else ''} of {args.login} revoked")
        return 0
    token = credentials.new_token()
    user, token_id = people.add_token(args.login, credentials.digest(token), utcnow(), args.label)
    print(token)
    print(f"token {token_id} of {user.login}: shown only this once; send it as 'Authorization: Bearer <token>'",
          file=sys.stderr)
    return 0


def _token_id(text: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"--revoke {text!r}: a token's id (users token LOGIN --list shows them) or 'all'")
    return int(text)


def audit_list(args, settings: Settings) -> int:
    from .storage.audit import Audit

    since = parse_time(args.since, "--since") if args.since else None
    count = 0
    for event in Audit(Store(settings.database_url)).all_events(leg_id=args.leg, login=args.user, since=since):
        count += 1
        if args.json:
            print(json.dumps(event.as_json()))
        else:
            print("\t".join((event.at.isoformat(timespec="seconds"), event.action, event.leg_id, event.login,
                             event.door, event.address or "-", event.detail or "")))
    if not count:
        print("no audit events match", file=sys.stderr)
    return 0
