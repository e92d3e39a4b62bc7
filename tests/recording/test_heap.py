"""`serve` freezes what start-up leaves alive out of the garbage collector's full collections
(recording/ops/heap.py): they walk only what was made since, and stop stalling the calls."""

from __future__ import annotations

import gc
import re

from recording import apikey
from recording.ops import heap
from recording.storage.store import Store
from tests.fake_asterisk import FakeAsterisk
from tests.recording.conftest import API_KEY
from tests.recording.test_cli import Serve


def test_freeze_leaves_no_object_for_a_full_collection_to_walk_and_spaces_them():
    kept = [[n] for n in range(1000)]  # tracked objects, alive
    thresholds = gc.get_threshold()
    try:
        frozen = heap.freeze()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (thresholds[0], thresholds[1], heap.FULL_AFTER)
        # What a full collection walks: the three generations, not the permanent one.
        assert not any(any(o is k for o in gc.get_objects()) for k in kept[:3])
        fresh = [[n] for n in range(10)]
        assert any(o is fresh[0] for o in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert any(o is kept[0] for o in gc.get_objects())


def test_serve_freezes_its_heap_once_started(tmp_path):
    url = f"sqlite:///{tmp_path}/heap.sqlite3"
    store = Store(url)
    store.upgrade()
    store.set_api_key_hash(apikey.hash_key(API_KEY))
    store.close()

    server = Serve(url, tmp_path)
    call = FakeAsterisk(server.port).call(f"recording/start?tag=heap&apiKey={API_KEY}")
    code, _, err = server.stop()

    assert call.status == "STARTED" and code == 0, err
    frozen = re.search(r"started: (\d+) objects frozen out of the garbage collector's full collections", err)
    assert frozen and int(frozen.group(1)) > 10_000, err


def test_the_legs_remembered_are_not_walked_by_the_collector(service, asterisk, store):
    from collections import OrderedDict

    call = asterisk.call(f"recording/start?tag=gc&apiKey={API_KEY}")
    assert call.status == "STARTED"
    remembered = service.app.service.active(call.uniqueid)
    (leg,) = store.find_legs(unique_id=call.uniqueid)
    assert (remembered.leg_id, remembered.file, remembered.tag) == (leg.id, leg.file, "gc")

    kept = OrderedDict.get(service.app.service._active, call.uniqueid)
    gc.collect()
    # Kept as a plain tuple of strings, numbers and None, which a collection stops tracking.
    assert isinstance(kept, tuple) and not gc.is_tracked(kept)
