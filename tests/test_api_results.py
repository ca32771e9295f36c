"""CreateAccounts/CreateTransfers results are encoded straight to wire format;
they must equal what protobuf objects would give: one EventResult per event,
in order, with the index, the code and the code's name (``code_<n>`` for a
code outside the enumeration)."""

from __future__ import annotations

import random

from ledger import api
from ledger.api_proto import pb
from ledger.codes import CreateAccountResult, CreateTransferResult


def _reference(codes, enum) -> list:
    out = []
    for i, code in enumerate(codes):
        try:
            name = enum(code).name.lower()
        except ValueError:
            name = f"code_{code}"
        out.append(pb.EventResult(index=i, code=code, name=name))
    return out


def test_wire_results_equal_protobuf_objects():
    rng = random.Random(7)
    for enum, response in ((CreateTransferResult, pb.CreateTransfersResponse),
                           (CreateAccountResult, pb.CreateAccountsResponse)):
        choices = [0, 0, 0, 999, 70_000] + [int(c) for c in enum][:12]
        for trial in range(120):
            n = api.EVENTS_PER_REQUEST_MAX if trial == 0 else rng.randint(1, 300)
            codes = [rng.choice(choices) for _ in range(n)]
            failures = [(i, c) for i, c in enumerate(codes) if c]
            got = response.FromString(api._results_wire(n, failures, enum))
            assert got == response(results=_reference(codes, enum)), (enum, trial)
            assert len(got.results) == n
