"""A replica killed at any moment restarts from a whole step: the last
acknowledged one, or the one it was committing, never half of one.

Goal: a child process (this file run as a script) does ``write_step`` in a
loop; each step accepts a run of slots, advances the chosen point, and applies
a deterministic set of table writes and deletes, then prints the step number
once ``write_step`` returned. The test SIGKILLs it at random moments (while it
opens, applies or commits), reopens the directory and checks that:

- the last acknowledged step is there (nothing acknowledged is lost), and at
  most the one step after it (the one being committed when killed);
- a step is made of two whole halves, its persist (promised, log, chosen
  point) and then its apply: either both are there, or only the persist, or
  neither; the rows equal a replay of the applied steps in memory, and the
  stored digest equals both the replay's and a full scan.

The child resumes from what it finds, so the kills accumulate on one
directory. Bounded: a fixed number of kills, each wait polled with a deadline.
Replay a run with STORAGE_CRASH_SEED=<seed> (printed, and in failure messages).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time

SLOTS_PER_STEP = 40
ROWS_PER_STEP_MAX = 3000
KEYS = 3000
TABLES_USED = (b"accounts", b"transfers", b"kv")
CLUSTER = "crash-test"
CHILD_STEPS_MAX = 2000  # a child never runs forever, whatever happens to the test


def step_promised(step: int):
    from consensus.ballot import Ballot

    return Ballot(step // 7 + 1, 1)


def step_entries(step: int):
    ballot = step_promised(step)
    first = step * SLOTS_PER_STEP
    return tuple((first + i, ballot, b"step %d slot %d" % (step, first + i)) for i in range(SLOTS_PER_STEP))


def apply_step(tables, step: int) -> int:
    """The table writes of ``step``: the same on every run and in the replay."""
    rng = random.Random(step)
    for _ in range(rng.randrange(1, ROWS_PER_STEP_MAX)):
        table = TABLES_USED[rng.randrange(len(TABLES_USED))]
        key = rng.randrange(KEYS).to_bytes(4, "big")
        if rng.random() < 0.25:
            tables.delete(table, key)
        else:
            tables.put(table, key, rng.randbytes(rng.randrange(0, 120)))
    return (step + 1) * SLOTS_PER_STEP


def child(path: str) -> None:
    from consensus.ready import Persist
    from ledger.storage import ReplicaStorage

    storage = ReplicaStorage(path, cluster_id=CLUSTER, replica_id=1)
    step = storage.applied_below // SLOTS_PER_STEP
    print("open", step, flush=True)
    for _ in range(CHILD_STEPS_MAX):
        persist = Persist(
            promised=step_promised(step),
            accepted=step_entries(step),
            chosen_below=(step + 1) * SLOTS_PER_STEP,
        )
        storage.write_step(persist, lambda tables: apply_step(tables, step))
        print(step, flush=True)
        step += 1


# --- the test ----------------------------------------------------------------

KILLS = 12
DEADLINE_S = 60.0


class ChildOutput:
    """Lines from the child's stdout, read with deadlines (never blocking)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buffer = b""
        self.lines: list[str] = []

    def read_some(self, deadline: float) -> bool:
        """Wait until output arrives (then read it) or ``deadline``; False at EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], remaining)[0]:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False  # the child exited
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(line.decode() for line in complete)
        return True

    def poll_until(self, deadline: float) -> None:
        """Collect output until ``deadline`` (monotonic) or the child's exit."""
        while time.monotonic() < deadline and self.read_some(deadline):
            pass

    def wait_for(self, predicate, deadline: float) -> None:
        """Collect output until ``predicate(lines)`` holds; fail at ``deadline``."""
        while not predicate(self.lines):
            if time.monotonic() >= deadline or not self.read_some(deadline):
                raise AssertionError(f"child: no progress; output {self.lines[-5:]}, rc {self.proc.poll()}")

    def acked_steps(self) -> list[int]:
        return [int(line) for line in self.lines if line and not line.startswith("open")]


def check_whole_step(path: str, acked_below: int, model, model_steps: list[int]) -> int:
    """Reopen ``path``; assert it holds a whole step >= the last acknowledged.

    ``acked_below``: steps below it were acknowledged. ``model`` is a
    MemoryTables replay of steps ``0 .. model_steps[0]-1``, advanced here.
    Returns the number of whole steps on disk.
    """
    from consensus.ballot import ZERO_BALLOT
    from ledger.storage import ReplicaStorage
    from ledger.tables import TABLES

    with ReplicaStorage(path, cluster_id=CLUSTER, replica_id=1) as storage:
        state = storage.load()
        assert state.applied_below % SLOTS_PER_STEP == 0, state.applied_below
        assert state.chosen_below % SLOTS_PER_STEP == 0, state.chosen_below
        done = state.applied_below // SLOTS_PER_STEP
        persisted = state.chosen_below // SLOTS_PER_STEP
        # Nothing acknowledged lost; at most the step in flight added, its
        # persist possibly without its apply.
        assert acked_below <= done <= acked_below + 1, (acked_below, done)
        assert done <= persisted <= done + 1, (done, persisted)
        assert persisted <= acked_below + 1, (acked_below, persisted)
        assert state.promised == (step_promised(persisted - 1) if persisted else ZERO_BALLOT)
        expected_log = {}
        for step in range(persisted):
            for slot, ballot, value in step_entries(step):
                expected_log[slot] = (ballot, value)
        assert state.accepted == expected_log
        while model_steps[0] < done:
            apply_step(model, model_steps[0])
            model_steps[0] += 1
        assert storage.state_digest() == model.digest
        assert storage.verify_digest() == model.digest
        with storage.reader() as view:
            rows = {t: dict(view.range(t, b"", None, 10**9)) for t in TABLES}
        assert rows == model.snapshot_rows()
        return done


def test_sigkill_at_random_moments_leaves_whole_steps(tmp_path):
    from ledger.tables import MemoryTables

    path = str(tmp_path / "replica")
    seed = int(os.environ.get("STORAGE_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    model = MemoryTables()
    model_steps = [0]  # steps replayed into the model
    done = 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    outcomes = []  # (steps acknowledged, 1 if the step in flight was kept)
    for kill in range(KILLS):
        deadline = time.monotonic() + DEADLINE_S
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), path],
            stdout=subprocess.PIPE,
            env=env,
            cwd=root,
        )
        try:
            out = ChildOutput(proc)
            if kill % 3 == 0:
                # Kill while it starts, imports or opens (maybe while it creates).
                out.poll_until(time.monotonic() + rng.uniform(0.0, 0.3))
            else:
                out.wait_for(lambda lines: any(l.startswith("open") for l in lines), deadline)
                acks_wanted = rng.randrange(0, 4)
                out.wait_for(lambda lines: len(out.acked_steps()) >= acks_wanted, deadline)
                # Then a random moment inside the next step(s): collect output
                # until a random point in time, so the kill lands in apply,
                # in the commit or between steps.
                out.poll_until(time.monotonic() + rng.uniform(0.0, 0.03))
            assert proc.poll() is None, f"child exited early with {proc.returncode} (seed {seed})"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=DEADLINE_S)
            out.poll_until(time.monotonic() + DEADLINE_S)  # to EOF: it is dead
            out.buffer = b""  # a partial line is not an acknowledgement
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=DEADLINE_S)
            proc.stdout.close()
        acked = out.acked_steps()
        assert acked == list(range(done, done + len(acked))), (acked, done, seed)
        acked_below = acked[-1] + 1 if acked else done
        done = check_whole_step(path, acked_below, model, model_steps)
        outcomes.append((len(acked), done - acked_below))
    print(f"seed {seed}: (acks, in-flight step kept) per kill: {outcomes}")
    assert done > 0, f"no step ever completed (seed {seed})"


if __name__ == "__main__":
    child(sys.argv[1])
