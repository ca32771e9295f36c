"""Goal: nemesis specs parse; the fault shim (LD_PRELOAD over clock_gettime, for
the monotonic, boottime and realtime clocks, and fsync) steps and drifts one
process's clocks continuously and makes its fsync
fail, driven by the file the clock and fsync nemeses write; and a short chaos
run on loopback (real replicas, the Toxiproxy-API proxy, the real client) is
judged valid, heals, converges and writes its report."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chaos import nemesis, runner
from chaos.cluster import build_shim

ROOT = Path(__file__).resolve().parent.parent


def test_specs_parse_and_unknown_ones_are_refused():
    n = nemesis.make("lose-city:paris:kill")
    assert (n.name, n.target, n.params) == ("lose-city", "paris", {"mode": "kill"})
    assert nemesis.make("kill").target == "random"
    with pytest.raises(ValueError, match="unknown nemesis"):
        nemesis.make("meteor")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    path = build_shim(tmp_path_factory.mktemp("shim"))
    if path is None:
        pytest.skip("no C compiler")
    return path


PROBE = """
import json, os, sys, time
m0, r0 = time.monotonic(), time.time()
for _ in range(3):
    line = sys.stdin.readline()
    result = {"mono": time.monotonic(), "real": time.time(), "boot": time.clock_gettime(time.CLOCK_BOOTTIME)}
    try:
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT)
        os.fsync(fd)
        os.close(fd)
        result["fsync"] = "ok"
    except OSError as e:
        result["fsync"] = e.strerror
    print(json.dumps(result), flush=True)
"""


def test_fault_shim_steps_drifts_and_fails_fsync(shim, tmp_path):
    faults = tmp_path / "faults-r1.txt"
    faults.write_text("1.0 0 0 0 0\n")
    ctx = SimpleNamespace(cluster=SimpleNamespace(fault_file=lambda rid: faults, shim=shim, ids=["r1"]),
                          rng=random.Random(1))
    n = nemesis.Nemesis("clock-step", "r1", {"seconds": 100.0})
    env = {"LD_PRELOAD": str(shim), "CHAOS_FAULT_FILE": str(faults), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", PROBE, str(tmp_path / "touch"), str(tmp_path / "f")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        def step() -> dict:
            import time

            before = {"mono": time.monotonic(), "real": time.time(), "boot": time.clock_gettime(time.CLOCK_BOOTTIME)}
            # not a wait for an event: the shim caches its file for 5 ms of real time by design
            time.sleep(0.02)
            proc.stdin.write("\n")
            proc.stdin.flush()
            return before, json.loads(proc.stdout.readline())

        before, plain = step()
        assert plain["fsync"] == "ok" and abs(plain["real"] - before["real"]) < 5
        n.start(ctx)
        before, stepped = step()
        assert stepped["mono"] - before["mono"] > 90  # monotonic jumped forward
        assert stepped["boot"] - before["boot"] > 90  # and boottime with it (the server's consensus ticks)
        assert stepped["real"] - before["real"] > 90
        nemesis.Nemesis("fsync-fail", "r1")._write_faults(ctx, "r1", fail_sync=1)
        _, failing = step()
        assert failing["fsync"] == "Input/output error"
    finally:
        proc.kill()
        proc.wait()


def test_fault_file_keeps_the_fake_clock_continuous(tmp_path):
    """Changing the rate re-anchors the offset so the fake clock does not jump."""
    faults = tmp_path / "f.txt"
    faults.write_text("2.0 0 0 0 0\n")
    ctx = SimpleNamespace(cluster=SimpleNamespace(fault_file=lambda rid: faults))

    def fake(now: int) -> float:
        rate, anchor, mono_off, _, _ = faults.read_text().split()
        return now + (now - int(anchor)) * (float(rate) - 1) + int(mono_off)

    import time

    now = time.monotonic_ns()
    before = fake(now)
    nemesis.Nemesis("clock-drift", "r1")._write_faults(ctx, "r1", rate=1.0)
    after = fake(now)
    assert abs(after - before) < 0.05 * 1e9  # continuous up to the few ms between the two readings


@pytest.mark.timeout(240)
def test_short_loopback_run_is_valid_and_reported(tmp_path):
    cfg = runner.RunConfig(topology="one-city", network="loopback", schedule=["kill:leader", "partition"],
                           fault_s=2.0, gap_s=1.5, warmup_s=1.0, post_heal_s=1.0, concurrency=2, seed=7,
                           out=tmp_path / "run")
    result = runner.execute(cfg)
    assert result["valid"], result["why_not_valid"]
    assert result["converged"]
    assert [row["fault"] for row in result["survival"]] == ["kill:leader", "partition"]
    for name in ("bank.jsonl", "register.jsonl", "set.jsonl", "verdict.json", "report.html", "throughput.png",
                 "latency.png"):
        assert (tmp_path / "run" / name).exists(), name
    line = runner.summary_line([result])
    assert line.startswith("chaos: valid=true ") and "\n" not in line


WAITS = """
import threading, time
real = lambda: time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
out = []
for wait in (lambda: time.sleep(0.2), lambda: threading.Event().wait(0.2)):
    t = real()
    wait()
    out.append(real() - t)
print(" ".join(f"{x:.3f}" for x in out))
"""


@pytest.mark.parametrize("offset_s", [30, -30])
def test_waits_keep_their_length_when_the_clock_is_stepped(shim, tmp_path, offset_s):
    """The kernel sleeps on the real clock: a deadline computed from the faked clock is moved back
    into real time, so a step neither stretches a 0.2 s wait by the step nor cuts it to nothing."""
    faults = tmp_path / "faults.txt"
    ns = int(offset_s * 1e9)
    faults.write_text(f"1.0 0 {ns} {ns} 0\n")
    env = {"LD_PRELOAD": str(shim), "CHAOS_FAULT_FILE": str(faults), "PATH": "/usr/bin:/bin"}
    got = subprocess.run([sys.executable, "-c", WAITS], capture_output=True, text=True, env=env, timeout=60)
    waits = [float(x) for x in got.stdout.split()]
    assert len(waits) == 2, got.stderr
    for w in waits:
        assert 0.15 < w < 5, waits
