"""Goal: the chaos checkers accept valid histories and reject invalid ones, with
hand-made histories (including operations whose outcome is unknown) and
Hypothesis-generated histories of a real sequential register."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import check_bank, check_register, check_set, linearizable
from chaos.history import FAIL, OK, UNKNOWN, History, Op


def op(process, f, args, t0, t1, status=OK, result=None):
    return Op(process, f, args, t0, t1 if status != UNKNOWN else None, status, result)


def reg(process, f, value, t0, t1, status=OK, result=None, key="k"):
    return op(process, f, {"key": key, "value": value}, t0, t1, status, result)


# ---------------------------------------------------------------- register


def test_sequential_register_history_is_linearizable():
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(1, "read", None, 2, 3, result=1),
        reg(2, "cas", [1, 2], 4, 5, result=True),
        reg(1, "read", None, 6, 7, result=2),
        reg(2, "cas", [1, 3], 8, 9, result=False),
    ])
    assert check_register(h).valid is True


def test_stale_read_after_completed_write_is_rejected():
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "write", 2, 2, 3),
        reg(1, "read", None, 4, 5, result=1),  # 2 was acknowledged before this read began
    ])
    v = check_register(h)
    assert v.valid is False and "no linearization" in v.errors[0]


def test_concurrent_write_may_be_seen_or_not():
    for seen in (1, 2):
        h = History.of([
            reg(1, "write", 1, 0, 1),
            reg(2, "write", 2, 2, 10),
            reg(1, "read", None, 3, 4, result=seen),
        ])
        assert check_register(h).valid is True


def test_read_of_a_value_never_written_is_rejected():
    h = History.of([reg(1, "write", 1, 0, 1), reg(2, "read", None, 2, 3, result=7)])
    assert check_register(h).valid is False


def test_unknown_write_may_take_effect_much_later():
    """An unknown write may land long after its client gave up on it."""
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "write", 2, 2, None, status=UNKNOWN),
        reg(1, "read", None, 10, 11, result=1),
        reg(1, "read", None, 20, 21, result=2),
    ])
    assert check_register(h).valid is True


def test_unknown_write_may_never_take_effect():
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "write", 2, 2, None, status=UNKNOWN),
        reg(1, "read", None, 30, 31, result=1),
    ])
    assert check_register(h).valid is True


def test_unknown_write_cannot_take_effect_before_it_was_invoked():
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(1, "read", None, 2, 3, result=2),
        reg(2, "write", 2, 5, None, status=UNKNOWN),
    ])
    assert check_register(h).valid is False


def test_unknown_write_cannot_take_effect_twice():
    """After 2 landed and 3 overwrote it, 2 cannot come back."""
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "write", 2, 2, None, status=UNKNOWN),
        reg(1, "read", None, 3, 4, result=2),
        reg(1, "write", 3, 5, 6),
        reg(1, "read", None, 7, 8, result=2),
    ])
    assert check_register(h).valid is False


def test_failed_write_never_happened():
    h = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "write", 2, 2, 3, status=FAIL),
        reg(1, "read", None, 4, 5, result=2),
    ])
    assert check_register(h).valid is False


def test_unknown_cas_succeeds_only_when_expected_value_is_current():
    ok = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "cas", [1, 5], 2, None, status=UNKNOWN),
        reg(1, "read", None, 9, 10, result=5),
    ])
    assert check_register(ok).valid is True
    bad = History.of([
        reg(1, "write", 1, 0, 1),
        reg(2, "cas", [4, 5], 2, None, status=UNKNOWN),
        reg(1, "read", None, 9, 10, result=5),
    ])
    assert check_register(bad).valid is False


def test_keys_are_checked_independently():
    h = History.of([
        reg(1, "write", 1, 0, 1, key="a"),
        reg(1, "write", 9, 0, 1, key="b"),
        reg(2, "read", None, 2, 3, result=1, key="a"),
        reg(2, "read", None, 2, 3, result=1, key="b"),
    ])
    v = check_register(h)
    assert v.valid is False and "'b'" in v.errors[0]


def test_search_bound_gives_undecided_not_valid():
    ops = [reg(p, "write", p, 0, 100) for p in range(12)] + [reg(99, "read", None, 200, 201, result=-1)]
    ok, why = linearizable(ops, steps_max=50)
    assert ok is None and "gave up" in why


@st.composite
def register_histories(draw):
    """A real sequential register run; each op's interval contains its linearization point."""
    n = draw(st.integers(1, 14))
    state = None
    ops = []
    for i in range(n):
        point = 10.0 * (i + 1)
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        before = draw(st.floats(0, 25))
        after = draw(st.floats(0, 25))
        status = draw(st.sampled_from([OK, OK, OK, UNKNOWN]))
        if kind == "read":
            ops.append(reg(i, "read", None, point - before, point + after, status, state if status == OK else None))
        elif kind == "write":
            ops.append(reg(i, "write", i, point - before, point + after, status))
            state = i
        else:
            expected = draw(st.sampled_from([state, i - 1, None]))
            success = expected == state
            ops.append(reg(i, "cas", [expected, i], point - before, point + after, status,
                           success if status == OK else None))
            if success:
                state = i
    # unknown writes that never took effect
    for j in range(draw(st.integers(0, 2))):
        ops.append(reg(100 + j, "write", 1000 + j, draw(st.floats(0, 10.0 * n)), None, UNKNOWN))
    return ops, state


@settings(max_examples=300, deadline=None)
@given(register_histories())
def test_generated_sequential_histories_are_linearizable(case):
    ops, _ = case
    assert check_register(History.of(ops)).valid is True


@settings(max_examples=200, deadline=None)
@given(register_histories(), st.data())
def test_generated_history_with_a_corrupted_read_is_rejected(case, data):
    ops, final_state = case
    t_end = max(o.complete_t or o.invoke_t for o in ops) + 100
    # a read after everything completed that returns a value nobody wrote
    ops = ops + [reg(500, "read", None, t_end, t_end + 1, OK, -7)]
    assert check_register(History.of(ops)).valid is False


# ---------------------------------------------------------------- bank


def test_bank_reads_must_sum_to_the_total_and_stay_nonnegative():
    good = [
        op(1, "transfer", {"debit": 1, "credit": 2, "amount": 5}, 0, 1),
        op(2, "read", None, 1, 2, result={1: 95, 2: 105}),
        op(2, "read", None, 3, 4, status=UNKNOWN),
    ]
    assert check_bank(History.of(good), [1, 2], 200, nonnegative=[1, 2]).valid is True
    bad_sum = good + [op(3, "read", None, 5, 6, result={"1": 95, "2": 104})]
    v = check_bank(History.of(bad_sum), [1, 2], 200)
    assert v.valid is False and "sums to 199" in v.errors[0]
    negative = good + [op(3, "read", None, 5, 6, result={1: -5, 2: 205})]
    assert check_bank(History.of(negative), [1, 2], 200, nonnegative=[1]).valid is False
    assert check_bank(History.of(negative), [1, 2], 200, nonnegative=[]).valid is True
    missing = good + [op(3, "read", None, 5, 6, result={1: 200})]
    assert check_bank(History.of(missing), [1, 2], 200).valid is False


def test_bank_without_reads_is_undecided():
    assert check_bank(History.of([]), [1], 10).valid is None


# ---------------------------------------------------------------- set


def test_set_acknowledged_adds_must_survive_and_unknown_ones_may():
    h = [
        op(1, "add", 1, 0, 1),
        op(2, "add", 2, 0, None, status=UNKNOWN),
        op(3, "add", 3, 0, None, status=UNKNOWN),
        op(4, "add", 4, 0, 1, status=FAIL),
        op(9, "read", None, 5, 6, result=[1, 2]),
    ]
    v = check_set(History.of(h))
    assert v.valid is True and v.stats["unknown_present"] == 1
    lost = h[:-1] + [op(9, "read", None, 5, 6, result=[2])]
    assert "missing" in check_set(History.of(lost)).errors[0]
    twice = h[:-1] + [op(9, "read", None, 5, 6, result=[1, 2, 2])]
    assert "more than once" in check_set(History.of(twice)).errors[0]
    stranger = h[:-1] + [op(9, "read", None, 5, 6, result=[1, 77])]
    assert "never added" in check_set(History.of(stranger)).errors[0]
    failed = h[:-1] + [op(9, "read", None, 5, 6, result=[1, 4])]
    assert check_set(History.of(failed)).valid is False


def test_history_roundtrips_through_json_lines(tmp_path):
    h = History()
    a = h.invoke(1, "write", {"key": "k", "value": 3})
    h.ok(a)
    b = h.invoke(2, "read", {"key": "k"})
    h.unknown(b, "timeout")
    h.save(tmp_path / "h.jsonl")
    loaded = History.load(tmp_path / "h.jsonl")
    assert [(o.f, o.status, o.args) for o in loaded] == [(o.f, o.status, o.args) for o in h]
