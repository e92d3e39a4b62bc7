"""``recording-agi``: run the service and administer its database.

Every command reads RECORDING_DATABASE_URL (or ``--database-url``). Exit status: 0 done,
1 the work failed (database unavailable, unknown user...), 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from datetime import datetime, timezone
from typing import Sequence

from . import apikey, cli_people
from .cli_people import parse_time as _parse_time
from .errors import ConfigError, RecordingFailure, StorageUnavailable
from .ops import eventloop
from .ops.config import Settings
from .ops.configfile import load_settings
from .ops.logs import configure
from .storage.store import Store, redact_url


CONFIG_ENV = "RECORDING_CONFIG"
# Options of the command line, by the setting they override: what a worker must be told.
OVERRIDES = {"database_url": "database_url", "listen": "agi_listen", "http": "http_listen", "log_format": "log_format"}


def _process_name(args, settings: Settings) -> str:
    """Which process of several this is, for its log lines: a worker of `serve --workers`,
    their supervisor, or '' for a process on its own."""
    from .ops.workers import WORKER_ENV

    if os.environ.get(WORKER_ENV):
        return f"worker {os.environ[WORKER_ENV]}"
    if getattr(args, "command", None) is serve and settings.workers > 1:
        return "supervisor"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = load_settings(
            args.config, database_url=args.database_url, agi_listen=getattr(args, "listen", None),
            http_listen=getattr(args, "http", None), workers=getattr(args, "workers", None),
            log_format=args.log_format,
        )
        configure(settings.log_level, fmt=settings.log_format, prefix=_process_name(args, settings))
        return args.command(args, settings)
    except ConfigError as exc:
        print(f"recording-agi: {exc}", file=sys.stderr)
        return 2
    except RecordingFailure as exc:
        print(f"recording-agi: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recording-agi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="SQLAlchemy database URL (default: RECORDING_DATABASE_URL, "
                        "else sqlite:///recording.sqlite3)")
    parser.add_argument("--config", metavar="FILE", default=os.environ.get(CONFIG_ENV) or None,
                        help=f"an INI or TOML file of settings (default: {CONFIG_ENV}); the environment and "
                             "the command line override it; serve re-reads it on SIGHUP")
    parser.add_argument("--log-format", choices=("text", "json"), help="default: RECORDING_LOG_FORMAT, else text")
    commands = parser.add_subparsers(metavar="COMMAND")

    db = commands.add_parser("db", help="the database schema").add_subparsers(metavar="ACTION", required=True)
    db.add_parser("upgrade", help="apply the migrations up to the newest").set_defaults(command=db_upgrade)
    db.add_parser("current", help="print the schema's migration").set_defaults(command=db_current)

    key = commands.add_parser("apikey", help="the apiKey").add_subparsers(metavar="ACTION", required=True)
    set_key = key.add_parser("set", help="store KEY (only its hash is kept); '-' reads it from stdin")
    set_key.add_argument("key")
    set_key.set_defaults(command=apikey_set)
    key.add_parser("generate", help="make a new key, store its hash, print it once").set_defaults(
        command=apikey_generate
    )

    users = commands.add_parser("users", help="users who own legs").add_subparsers(metavar="ACTION", required=True)
    add = users.add_parser("add", help="add a user (or add groups to one)")
    add.add_argument("login")
    add.add_argument("--group", action="append", default=[], help="a group, e.g. 'Recording Manager' (repeatable)")
    add.set_defaults(command=users_add)
    cli_people.add_user_commands(users)

    exts = commands.add_parser("extensions", help="who is at which extension").add_subparsers(
        metavar="ACTION", required=True
    )
    attach = exts.add_parser("attach", help="attach LOGIN to EXTEN (replacing whoever was there)")
    attach.add_argument("extension")
    attach.add_argument("login")
    attach.set_defaults(command=extensions_attach)
    detach = exts.add_parser("detach", help="leave EXTEN with nobody attached")
    detach.add_argument("extension")
    detach.set_defaults(command=extensions_detach)

    serve_cmd = commands.add_parser("serve", help="run the FastAGI server")
    serve_cmd.add_argument("--listen", help="HOST:PORT (default: RECORDING_AGI_LISTEN, else 127.0.0.1:4573)")
    serve_cmd.add_argument("--http", metavar="HOST:PORT",
                           help="also serve the HTTP recording API (default: RECORDING_HTTP_LISTEN, else off)")
    serve_cmd.add_argument("--workers", type=int, metavar="N",
                           help="run N server processes sharing the listen ports, e.g. one per core "
                                "(default: RECORDING_WORKERS, else 1)")
    serve_cmd.set_defaults(command=serve)

    journal = commands.add_parser("journal", help="writes waiting for the database").add_subparsers(
        metavar="ACTION", required=True
    )
    status = journal.add_parser("status", help="what the journal holds")
    status.add_argument("--journal-dir", help="default: RECORDING_JOURNAL_DIR, else ./recording-journal")
    status.set_defaults(command=journal_status)

    commands.add_parser("config-sample", help="print a config file naming every setting at its default").set_defaults(
        command=config_sample)

    check_cmd = commands.add_parser("check", help="check the settings, database, schema, apiKey, journal, AMI "
                                    "and listen addresses; exit 1 if anything is wrong")
    check_cmd.add_argument("--listen", help="HOST:PORT to check (default: RECORDING_AGI_LISTEN)")
    check_cmd.add_argument("--http", metavar="HOST:PORT", help="HTTP listen address to check")
    check_cmd.add_argument("--dialplan", metavar="FILE", action="append", default=[],
                           help="also read this extensions.conf for its AGI() calls to the service (repeatable)")
    check_cmd.add_argument("--systemd-sockets", action="store_true",
                           help="the listen ports are held by systemd's socket unit (recording-agi.socket): "
                           "do not try to bind them")
    check_cmd.set_defaults(command=check)

    rec = commands.add_parser("recordings", help="recording legs").add_subparsers(metavar="ACTION", required=True)
    find = rec.add_parser("find", help="list legs by tag and/or unique call id")
    find.add_argument("--tag")
    find.add_argument("--unique-id")
    find.add_argument("--as", dest="as_login", metavar="LOGIN",
                      help="only the legs LOGIN may see (own legs; all for 'Recording Manager')")
    find.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    find.set_defaults(command=recordings_find)
    purge = rec.add_parser("purge", help="delete the audio of ended legs older than a period, except held ones; "
                           "the legs stay, as purged")
    purge.add_argument("--older-than", metavar="PERIOD", help="e.g. 90d (h, d, w, y); default: RECORDING_RETENTION")
    purge.add_argument("--dry-run", action="store_true", help="say what would be purged, change nothing")
    purge.set_defaults(command=recordings_purge)
    hold = rec.add_parser("hold", help="place a legal hold on a leg (its audio is never purged), or release it")
    hold.add_argument("leg", metavar="LEG", help="the leg's id (recordings find --json shows it as id)")
    hold.add_argument("--release", action="store_true", help="release the hold instead")
    hold.add_argument("--reason", help="why, e.g. a case reference (kept with the hold)")
    hold.add_argument("--by", help="who holds it (default: the user running the command)")
    hold.set_defaults(command=recordings_hold)
    verify = rec.add_parser("verify", help="recompute the size and SHA-256 of ended legs' files; print each that "
                            "changed, vanished or was never hashed; exit 1 if any changed or vanished")
    verify.add_argument("--since", metavar="DATE", help="only legs started on or after DATE (2026-11-01, or a "
                        "time; UTC unless it says otherwise)")
    verify.set_defaults(command=recordings_verify)
    # Webhooks (README, "Webhooks"): their commands live in ops/webhookcli.py.
    from .ops.webhookcli import add_commands

    add_commands(commands)
    cli_people.add_audit_command(commands)
    return parser


def _store(settings: Settings) -> Store:
    return Store(settings.database_url)


def db_upgrade(args, settings: Settings) -> int:
    store = _store(settings)
    before = store.schema_revision()
    store.upgrade()
    after = store.schema_revision()
    print(f"{redact_url(store.url)}: schema {before or 'empty'} -> {after}")
    return 0


def db_current(args, settings: Settings) -> int:
    store = _store(settings)
    current, head = store.schema_revision(), store.head_revision()
    print(f"{current or 'empty'} (newest: {head})")
    return 0 if current == head else 1


def apikey_set(args, settings: Settings) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if not key:
        raise ConfigError("the apiKey cannot be empty")
    _store(settings).set_api_key_hash(apikey.hash_key(key))
    print("apiKey stored (as a hash); the running service takes it within its refresh interval")
    return 0


def apikey_generate(args, settings: Settings) -> int:
    key = apikey.generate()
    _store(settings).set_api_key_hash(apikey.hash_key(key))
    print(key)
    return 0


def users_add(args, settings: Settings) -> int:
    user = _store(settings).add_user(args.login, args.group)
    groups = ", ".join(sorted(user.groups)) or "no groups"
    print(f"user {user.login} ({groups})")
    return 0


def extensions_attach(args, settings: Settings) -> int:
    user = _store(settings).attach_extension(args.extension, args.login)
    print(f"extension {args.extension}: {user.login}")
    return 0


def extensions_detach(args, settings: Settings) -> int:
    detached = _store(settings).detach_extension(args.extension)
    print(f"extension {args.extension}: {'nobody attached now' if detached else 'nobody was attached'}")
    return 0


def recordings_find(args, settings: Settings) -> int:
    store = _store(settings)
    legs = store.find_legs(tag=args.tag, unique_id=args.unique_id)
    if args.as_login:
        user = store.find_user(args.as_login)
        if user is None:
            print(f"recording-agi: unknown user {args.as_login!r}", file=sys.stderr)
            return 1
        legs = [leg for leg in legs if leg.visible_to(user)]
    if args.json:
        now = datetime.now(timezone.utc)
        json.dump([leg.as_json(now) for leg in legs], sys.stdout, indent=2)
        print()
        return 0
    for leg in legs:
        print("\t".join((
            leg.unique_id, str(leg.leg), leg.state, leg.ownership, leg.owner or "-", leg.tag or "-",
            leg.start.isoformat(timespec="seconds"), leg.file, leg.id,
        )))
    if not legs:
        print("no recording legs found", file=sys.stderr)
    return 0


def _monitor(settings: Settings):
    from .storage.audio import MonitorDirectory

    return MonitorDirectory.of(settings)


def _leg_line(leg, text: str, word: str) -> str:
    return f"{word:<9} {leg.id}  {leg.unique_id} leg {leg.leg}  {text}"


def recordings_purge(args, settings: Settings) -> int:
    from .ops.config import parse_period
    from .storage.retention import Purger, hold_sentence

    if args.older_than:
        period = parse_period(args.older_than, "--older-than")
        reason = f"older than {args.older_than} (recordings purge)"
    elif settings.retention:
        period, reason = settings.retention_period, f"older than {settings.retention} (RECORDING_RETENTION)"
    else:
        raise ConfigError("no retention period: give --older-than (e.g. 90d) or set RECORDING_RETENTION")
    import getpass

    purger = Purger(_store(settings), _monitor(settings), by=getpass.getuser(), door="cli")
    report = purger.run(period, reason, dry_run=args.dry_run)
    word = "would" if args.dry_run else "purged"
    for leg, done in report.purged:
        print(_leg_line(leg, f"ended {leg.end.isoformat(timespec='seconds')}: {done}", word))
    for leg in report.held:
        print(_leg_line(leg, f"kept: {hold_sentence(leg)}", "held"))
    for leg, why in report.failed:
        print(_leg_line(leg, why, "not"))
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def recordings_hold(args, settings: Settings) -> int:
    import getpass

    from .storage import audit as audit_table
    from .storage.retention import audit_hold, hold_sentence

    by = args.by or getpass.getuser()

    def audited(conn, leg, changed) -> None:
        audit_table.write(conn, [audit_table.hold_event(leg, not args.release, changed, by, "cli", None, args.reason)])

    leg, changed = _store(settings).set_hold(
        args.leg, held=not args.release, by=by, at=datetime.now(timezone.utc), reason=args.reason, then=audited,
    )
    audit_hold(leg, not args.release, changed, by)
    if args.release:
        print(f"leg {leg.id}: hold released" if changed else f"leg {leg.id} was not held")
    else:
        print(hold_sentence(leg) if changed else f"already: {hold_sentence(leg)}")
    return 0


def recordings_verify(args, settings: Settings) -> int:
    from .storage.integrity import VerifyReport, verify

    since = _parse_time(args.since, "--since") if args.since else None
    report = VerifyReport()
    from .storage.browse import Browse

    store = _store(settings)
    for finding in verify(store, _monitor(settings), since, report, keep=Browse(store).record_checks):
        print(_leg_line(finding.leg, finding.detail, finding.kind))
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def journal_status(args, settings: Settings) -> int:
    from .storage.journal import REJECTED, Journal, worker_directories

    top = args.journal_dir or settings.journal_dir
    # `serve --workers` gives each worker a worker-N folder: those with something in them too.
    for number, directory in enumerate([top, *worker_directories(top)]):
        journal = Journal(directory)
        segments = journal.status()
        rejected = journal.directory / REJECTED
        if number and not segments and not rejected.exists():
            continue
        waiting = sum(s.entries for s in segments)
        print(f"{journal.directory}: {waiting} writes wait for the database in {len(segments)} files")
        for segment in segments:
            print(f"  {segment.name}\t{segment.entries}\t{segment.oldest or '-'}\t{segment.newest or '-'}")
        if rejected.exists():
            count = rejected.read_bytes().count(b"\n")
            print(f"{rejected}: {count} writes the database refused at replay (kept for inspection)")
    return 0


def config_sample(args, settings: Settings) -> int:
    from .ops.configfile import sample_text

    sys.stdout.write(sample_text())
    return 0


def check(args, settings: Settings) -> int:
    from .ops.check import check as run_checks, format_findings

    from .ops.dialplan import check_dialplan
    from .doors.fastagi import ROUTES

    findings = asyncio.run(run_checks(settings, systemd_sockets=args.systemd_sockets))
    for path in args.dialplan:
        findings += check_dialplan(path, ROUTES)
    print(format_findings(findings))
    return 0 if all(f.ok for f in findings) else 1


def serve(args, settings: Settings) -> int:
    from .app import Application, prepare_database
    from .ops.health import HEALTH_ENV, Board
    from .storage.snapshot import require
    from .ops.workers import WORKER_ENV, Supervisor, check_shareable
    from .ops.sockets import handed_over

    if os.environ.get(WORKER_ENV):
        # NOTE: the supervisor passes SIGHUP on to its workers; until the service installs
        # its own handler, SIGHUP's default action must not end a worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Taken first: systemd's variables must not reach a worker, and a socket the settings do
    # not name is refused before anything starts.
    sockets = handed_over(settings)
    if settings.workers > 1:
        check_shareable(settings)
    loop = eventloop.loop_factory(settings.event_loop)  # a loop that cannot run is said before anything starts
    store = _store(settings)
    unreachable = None
    try:
        new_key = prepare_database(store)
    except StorageUnavailable as exc:
        if not exc.outage:
            raise
        # Served from the directory snapshot (refused here when there is none); the schema is
        # checked once the database answers.
        snapshot = require(settings.journal_dir, redact_url(store.url), exc)
        unreachable, new_key = exc, None
    if new_key is not None:
        print(
            "No apiKey was configured, so one was generated. It is shown only this once:\n\n"
            f"    {new_key}\n\nPut it in the dialplan (apiKey=...) or the channel variable "
            f"{settings.api_key_variable}.\n",
            flush=True,
        )
    overrides = {setting: getattr(args, option) for option, setting in OVERRIDES.items()
                 if getattr(args, option, None) is not None}
    if settings.workers > 1:
        store.close()
        if unreachable is not None:
            logging.getLogger("recording.workers").warning(
                "the database cannot be reached (%s): the workers start from the directory snapshot of %s",
                unreachable, snapshot.when)
        return Supervisor(settings, config=args.config, overrides=overrides, sockets=sockets).run()
    board = None
    if os.environ.get(WORKER_ENV) and os.environ.get(HEALTH_ENV):
        board = Board(os.environ[HEALTH_ENV], int(os.environ[WORKER_ENV]))
    app = Application(settings, store, config=args.config, overrides=overrides, board=board,
                      unreachable=unreachable, sockets=sockets)
    eventloop.run(app.run_until_signalled, loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
