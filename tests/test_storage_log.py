"""The acceptor state and log read back exactly as written, across reopen.

Goal: for random sequences of ``Persist`` values (promises that only go up,
accepts that overwrite slots at higher ballots, values from empty to a few
KiB, slots and rounds up to the 64-bit limit, chosen points that only go up)
interleaved with log compactions, ``load()`` equals a plain-dict model of what
was written, both on the open storage and after closing and reopening it.
"""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.ballot import ZERO_BALLOT, Ballot
from consensus.ready import DurableState, Persist
from ledger.storage import ReplicaStorage

U64_MAX = (1 << 64) - 1
SLOT = st.one_of(st.integers(0, 40), st.integers(U64_MAX - 3, U64_MAX))
ROUND = st.one_of(st.integers(0, 5), st.integers(U64_MAX - 2, U64_MAX))
BALLOT = st.builds(Ballot, ROUND, st.integers(0, 7))
VALUE = st.one_of(st.binary(max_size=16), st.binary(min_size=2000, max_size=5000))

ACTION = st.one_of(
    st.tuples(
        st.just("persist"),
        st.one_of(st.none(), BALLOT),
        st.lists(st.tuples(SLOT, BALLOT, VALUE), max_size=6),
        st.one_of(st.none(), st.integers(0, 60)),
    ),
    st.tuples(st.just("compact"), st.integers(0, 60)),
)


@settings(max_examples=100, deadline=None)
@given(actions=st.lists(ACTION, max_size=12))
def test_load_equals_what_was_written(actions):
    promised = ZERO_BALLOT
    accepted: dict[int, tuple[Ballot, bytes]] = {}
    chosen_below = applied_below = log_start = 0
    with tempfile.TemporaryDirectory() as tmp:
        with ReplicaStorage(tmp, cluster_id="log", replica_id=3) as storage:
            for action in actions:
                if action[0] == "compact":
                    below = min(action[1], applied_below)
                    storage.compact_log(below)
                    log_start = max(log_start, below)
                    accepted = {s: e for s, e in accepted.items() if s >= log_start}
                    continue
                _, new_promise, entries, new_chosen = action
                # The core never lowers a promise or the chosen point.
                if new_promise is not None and new_promise < promised:
                    new_promise = None
                if new_chosen is not None and new_chosen < chosen_below:
                    new_chosen = None
                persist = Persist(
                    promised=new_promise,
                    accepted=tuple((s, b, v) for s, b, v in entries),
                    chosen_below=new_chosen,
                )
                target = max(applied_below, (new_chosen or chosen_below) - 1)
                storage.write_step(persist, lambda tables: target)
                if new_promise is not None:
                    promised = new_promise
                for slot, ballot, value in entries:
                    accepted[slot] = (ballot, value)
                if new_chosen is not None:
                    chosen_below = new_chosen
                applied_below = target
            expected = DurableState(
                promised=promised,
                accepted={s: e for s, e in accepted.items() if s >= log_start},
                chosen_below=chosen_below,
                applied_below=applied_below,
                log_start=log_start,
            )
            assert storage.load() == expected
        with ReplicaStorage(tmp, cluster_id="log", replica_id=3) as storage:
            assert storage.load() == expected
            assert storage.promised == promised
            assert (storage.chosen_below, storage.applied_below, storage.log_start) == (
                chosen_below,
                applied_below,
                log_start,
            )
