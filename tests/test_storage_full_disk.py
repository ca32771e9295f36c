"""A full disk fails a step cleanly, and writing resumes once space returns.

Goal: on a small tmpfs, write steps until the disk is full. The failing step
must raise ``StorageUnavailable`` (not crash, not SIGBUS), change nothing (the
committed state, its digest and the in-memory accessors stay those of the last
step that returned), and leave the environment readable with a digest that a
full scan confirms. After a filler file is deleted, the very step that failed
succeeds, more steps follow, and a reopen finds all of it.

Needs root and tmpfs; skipped otherwise. The mount is always undone.
"""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from consensus.ballot import Ballot
from consensus.ready import Persist
from ledger.storage import ReplicaStorage, StorageUnavailable
from ledger.tables import TABLES, MemoryTables

TMPFS_SIZE = "4m"
FILLER_BYTES = 1 << 20
STEPS_MAX = 1000  # 4 MiB fills long before this
ROWS_PER_STEP = 40
CLUSTER = "full-disk"


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def make_step(step: int):
    """Persist and apply of ``step``: deterministic, about 50 KiB of new data."""
    rng = random.Random(step)
    persist = Persist(
        promised=Ballot(1, 1) if step == 0 else None,
        accepted=((step, Ballot(1, 1), rng.randbytes(8192)),),
        chosen_below=step + 1,
    )
    rows = [(rng.randbytes(12), rng.randbytes(1000)) for _ in range(ROWS_PER_STEP)]

    def apply(tables):
        for key, value in rows:
            tables.put(b"kv", key, value)
        return step + 1

    return persist, apply


def check_state(storage: ReplicaStorage, steps_done: int, model: MemoryTables) -> None:
    """Steps below ``steps_done`` are whole; the failed step after them may
    have its persist (the acceptor half) without its apply, never more."""
    assert storage.applied_below == steps_done
    assert storage.chosen_below in (steps_done, steps_done + 1)
    state = storage.load()
    assert state.applied_below == steps_done
    assert state.chosen_below == storage.chosen_below
    assert sorted(state.accepted) == list(range(state.chosen_below))
    assert storage.state_digest() == model.digest
    assert storage.verify_digest() == model.digest
    with storage.reader() as view:
        assert view.digest == model.digest
        rows = {t: dict(view.range(t, b"", None, 10**9)) for t in TABLES}
    assert rows == model.snapshot_rows()


def test_full_disk_fails_cleanly_and_recovers(small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\xa5" * FILLER_BYTES)
    path = small_disk / "replica"
    model = MemoryTables()
    storage = ReplicaStorage(path, cluster_id=CLUSTER, replica_id=1, map_size_bytes=256 << 20)
    try:
        done = 0
        failure = None
        while done < STEPS_MAX:
            persist, apply = make_step(done)
            try:
                storage.write_step(persist, apply)
            except StorageUnavailable as e:
                failure = e
                break
            apply(model)
            done += 1
        assert failure is not None, "the disk never filled"
        assert failure.cause is not None
        assert done > 0, "not even one step fitted"

        # Nothing of the failed step's apply, and everything before it, readable.
        check_state(storage, done, model)
        # While the disk stays full, retries fail the same way and harm nothing.
        for _ in range(2):
            with pytest.raises(StorageUnavailable):
                storage.write_step(*make_step(done))
            check_state(storage, done, model)

        filler.unlink()
        persist, apply = make_step(done)  # the step that failed, again
        storage.write_step(persist, apply)
        apply(model)
        done += 1
        for _ in range(3):
            persist, apply = make_step(done)
            storage.write_step(persist, apply)
            apply(model)
            done += 1
        check_state(storage, done, model)
    finally:
        storage.close()

    with ReplicaStorage(path, cluster_id=CLUSTER, replica_id=1, map_size_bytes=256 << 20) as storage:
        check_state(storage, done, model)
        assert storage.promised == Ballot(1, 1)
