"""Coverage-guided fuzzing (atheris / libFuzzer) of the decoders that read outside bytes.

Goal: libFuzzer, steering by coverage of the decoders, finds no input that
makes ``wire.decode_frame`` raise anything but ``WireError``,
``commands.decode_batch`` anything but ``MalformedCommand`` (and an accepted
frame or batch re-encodes to the same meaning), or ``ta.files.read_data_file``
anything but ``FileRejected``. Each target runs in its own process for a
bounded number of inputs (``LEDGER_FUZZ_RUNS``, default 50,000) from a seed
corpus of valid inputs; a crash prints the input that caused it. Longer runs:

    .venv/bin/python tests/test_fuzz_atheris.py wire -runs=1000000

Skipped where atheris is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("LEDGER_FUZZ_RUNS", "50000"))
TARGETS = ("wire", "batch", "ta_file")


def _seeds(target: str) -> list[bytes]:
    if target == "wire":
        import dataclasses

        from consensus.ballot import Ballot
        from consensus.messages import RejectReason
        from ledger import wire

        values = {"src": 1, "dst": 2, "ballot": Ballot(3, 1), "promised": Ballot(3, 1), "transfer": False,
                  "granted": True, "reason": next(iter(RejectReason)), "transfer_from": Ballot(2, 1),
                  "accepted": ((7, Ballot(2, 1), b"v" * 10),), "entries": ((7, b"w" * 10),), "slots": (1, 2),
                  "base_digest": bytes(32), "digest": bytes(32), "rows": b"r" * 10}
        return [wire.encode_frame("c", 1, [cls(**{f.name: values.get(f.name, 5) for f in dataclasses.fields(cls)})])
                for cls in wire.PEER_MESSAGE_TYPES]
    if target == "batch":
        from ledger import commands as cmd

        return [cmd.encode_batch(5, [cmd.KvPut(b"k", b"v"), cmd.CreateTransfers(bytes(128)), cmd.Noop()])]
    sys.path.insert(0, str(ROOT / "tests"))
    from test_ta_files import GOOD_RAW

    return [GOOD_RAW]


def _target(name: str):
    if name == "wire":
        from ledger import wire

        def check(data: bytes) -> None:
            try:
                sender, messages = wire.decode_frame(data, "c")
            except wire.WireError:
                return
            assert wire.decode_frame(wire.encode_frame("c", sender, messages), "c") == (sender, messages)

        return check
    if name == "batch":
        from ledger import commands as cmd

        def check(data: bytes) -> None:
            try:
                batch = cmd.decode_batch(data)
            except cmd.MalformedCommand:
                return
            assert cmd.decode_batch(cmd.encode_batch(batch.timestamp_ns, batch.commands)) == batch

        return check
    from ta.errors import FileRejected
    from ta.files import read_data_file

    def check(data: bytes) -> None:
        try:
            read_data_file(data)
        except FileRejected:
            return

    return check


def _fuzz_main(argv: list[str]) -> None:
    import tempfile

    import atheris

    name, args = argv[0], argv[1:]
    with atheris.instrument_imports():
        check = _target(name)
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(_seeds(name)):
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0]] + args + [str(corpus)], check)
    atheris.Fuzz()


@pytest.mark.parametrize("target", TARGETS)
def test_coverage_guided_fuzzing_finds_no_crash(target, tmp_path):
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, __file__, target, f"-runs={RUNS}", "-max_len=4096", "-max_total_time=120",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Done" in result.stderr, result.stderr[-2000:]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _fuzz_main(sys.argv[1:])
