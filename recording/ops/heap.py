"""What the garbage collector walks in a running service.

A started service holds about 110,000 objects the collector tracks (modules, functions, classes,
SQLAlchemy's and Alembic's tables, the protocol's caches), nearly all of them kept until exit.
CPython's full collection walks every tracked object, on the thread that triggered it, which is
the event loop: 20-55 ms on the bench's machine (bench/README.md, "What stalled the loop"), and
every call in flight waits that long. :func:`freeze` moves what start-up left alive into the
collector's permanent generation, which no collection walks; a full collection then walks only
what was made since (the legs being recorded, mostly), and comes later too, since it waits until
the objects promoted since the last one reach a quarter of those it kept.

Frozen objects are still freed when their last reference goes; only a reference cycle among
them is never collected, which is why this is done once start-up is over (and once more when a
database that was away at the start has been read), not over and over.

Once the start-up heap is frozen, what is left in the oldest generation is small, and the rule
that spaced full collections out (a quarter of the objects kept by the last one must have been
promoted since) no longer does: at 100 calls in flight the objects of the calls in flight are
promoted all the time, and a full collection came every 10 collections of the middle
generation, as often as every second or two. :data:`FULL_AFTER` spaces them ten times as far;
the sessions leave almost no cyclic garbage behind (0 to 50 objects found per full collection
in the bench's runs), so little waits longer to be freed.
"""

from __future__ import annotations

import gc

# Collections of the middle generation between two full ones (CPython's default: 10).
FULL_AFTER = 100


def freeze() -> int:
    """Collects the garbage start-up left, freezes every object still tracked out of later
    collections, and spaces the full collections by :data:`FULL_AFTER`. Returns how many objects
    are frozen now (all freezes together)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER)
    return gc.get_freeze_count()
