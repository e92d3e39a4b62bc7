"""``recording-agi webhooks ...``: subscriptions and their deliveries (README, "Webhooks")."""

from __future__ import annotations

import asyncio
import os
import sys

from ..errors import Invalid
from ..storage.outbox import Outbox, Subscription, parse_events
from ..storage.store import Store
from .destinations import Destinations
from .webhooks import GuardedResolver, check_url, new_secret, post, session


def add_commands(commands) -> None:
    """Adds ``webhooks`` and its actions to the CLI's subcommands."""
    hooks = commands.add_parser("webhooks", help="tell a CRM of each leg's events (signed HTTP POSTs)") \
        .add_subparsers(metavar="ACTION", required=True)
    add = hooks.add_parser("add", help="subscribe URL; prints the signing secret, once")
    add.add_argument("url")
    add.add_argument("--events", help="comma-separated kinds (started, failed, paused, resumed, ended, ready, held, "
                                      "released, purged); default: all")
    add.add_argument("--tag-prefix", help="only legs whose tag starts with this")
    add.set_defaults(command=webhooks_add)
    hooks.add_parser("list", help="the subscriptions and their pending and failed deliveries").set_defaults(
        command=webhooks_list)
    remove = hooks.add_parser("remove", help="delete a subscription (its pending deliveries are not sent)")
    remove.add_argument("id", type=int)
    remove.set_defaults(command=webhooks_remove)
    test = hooks.add_parser("test", help="send one signed test event to a subscription and print the answer")
    test.add_argument("id", type=int)
    test.set_defaults(command=webhooks_test)
    deliveries = hooks.add_parser("deliveries", help="the newest deliveries (or only those given up)")
    deliveries.add_argument("--failed", action="store_true", help="only deliveries given up after their retries")
    deliveries.add_argument("--subscription", type=int, help="only this subscription's")
    deliveries.add_argument("--limit", type=int, default=50)
    deliveries.set_defaults(command=webhooks_deliveries)
    redeliver = hooks.add_parser("redeliver", help="send deliveries again (same webhook-id), by id or all failed")
    redeliver.add_argument("ids", type=int, nargs="*", metavar="DELIVERY")
    redeliver.add_argument("--failed", action="store_true", help="every delivery given up (of --subscription)")
    redeliver.add_argument("--subscription", type=int)
    redeliver.set_defaults(command=webhooks_redeliver)


def _outbox(settings) -> Outbox:
    return Outbox(Store(settings.database_url))


def _line(sub: Subscription) -> str:
    events = ",".join(sub.events) if sub.events else "all"
    state = f"failing since {sub.failing_since.isoformat()}" if sub.failing_since else "ok"
    return (f"{sub.id}\t{sub.url}\tevents={events}\ttag-prefix={sub.tag_prefix or '-'}\tpending={sub.pending}\t"
            f"failed={sub.failed}\t{state}")


def webhooks_add(args, settings) -> int:
    url = check_url(args.url)
    events = parse_events(args.events)
    secret = new_secret()
    sub = _outbox(settings).add(url, secret, events, args.tag_prefix)
    print(_line(sub))
    print(f"secret: {secret}")
    print("(shown this once: give it to the receiver, which checks each request's webhook-signature with it)",
          file=sys.stderr)
    return 0


def webhooks_list(args, settings) -> int:
    for sub in _outbox(settings).subscriptions():
        print(_line(sub))
    return 0


def webhooks_remove(args, settings) -> int:
    if not _outbox(settings).remove(args.id):
        print(f"no webhook subscription has the id {args.id}", file=sys.stderr)
        return 1
    print(f"subscription {args.id} removed")
    return 0


def webhooks_test(args, settings) -> int:
    import json

    from ..domain import utcnow

    sub = _outbox(settings).subscription(args.id)
    message_id = "msg_test_" + os.urandom(8).hex()
    body = json.dumps({"type": "recording.test", "timestamp": utcnow().isoformat(),
                       "data": {"SubscriptionId": sub.id}}, separators=(",", ":")).encode()

    destinations = Destinations(settings.webhook_deny, settings.webhook_allow)

    async def send():
        client = session(GuardedResolver(destinations))
        try:
            return await post(client, destinations, sub.url, sub.secret, message_id, body, settings.webhook_timeout)
        finally:
            await client.close()

    answer = asyncio.run(send())
    print(f"webhook-id {message_id} to {sub.url}")
    print(f"answer: {answer.status if answer.status is not None else 'none'}"
          + (f" ({answer.error})" if answer.error else " (ok)"))
    if answer.body:
        print(answer.body.decode("utf-8", "replace"))
    return 0 if answer.ok else 1


def webhooks_deliveries(args, settings) -> int:
    for d in _outbox(settings).deliveries(failed_only=args.failed, subscription_id=args.subscription,
                                          limit=args.limit):
        when = d.delivered_at or d.next_at
        status = d.last_status if d.last_status is not None else "-"
        print(f"{d.id}\t{d.state}\t{d.kind}\tleg {d.leg_id}\t{d.message_id}\tsubscription {d.subscription_id}\t"
              f"tries={d.attempts}\tlast={status}\t{when.isoformat()}" + (f"\t{d.last_error}" if d.last_error else ""))
    return 0


def webhooks_redeliver(args, settings) -> int:
    if not args.ids and not args.failed:
        raise Invalid("name the deliveries to send again, or --failed for every one given up")
    count = _outbox(settings).redeliver(args.ids, all_failed=args.failed, subscription_id=args.subscription)
    print(f"{count} deliveries queued again")
    return 0 if count or args.failed else 1
