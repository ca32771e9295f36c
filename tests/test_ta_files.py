"""Profile-21 files (ta.files): round trips, determinism, and rejection.

Round trips: for random declared field lists and random records (incl.
Chinese InvestorName counted in GB18030 bytes), write then read gives the
same file, and the bytes are identical run to run. Rejection: each malformed
case rejects the whole file with its stable FileError code; arbitrary byte
damage never raises anything but FileRejected.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ta.codes import FileType
from ta.errors import FileError, FileRejected, InvalidInput
from ta.files import (
    DATE_FIELDS,
    FIELD_DICTIONARY,
    STANDARD_FIELDS,
    TIME_FIELDS,
    DataFile,
    IndexFile,
    data_file_name,
    index_file_name,
    parse_data_file_name,
    read_data_file,
    read_index_file,
    write_data_file,
    write_index_file,
)

ta_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HAN = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
ANY = st.characters(blacklist_categories=("Cs", "Cc"))  # incl. 4-byte GB18030


@st.composite
def text_within(draw, width: int, alphabet=st.one_of(ASCII, HAN)) -> str:
    """Text whose GB18030 encoding fits ``width`` bytes, no trailing space."""
    chars = draw(st.lists(alphabet, max_size=width))
    out, used = "", 0
    for ch in chars:
        size = len(ch.encode("gb18030"))
        if used + size > width:
            break
        out, used = out + ch, used + size
    return out.rstrip(" ")


dates = st.dates().map(lambda d: d.strftime("%Y%m%d")).filter(lambda s: len(s) == 8)
times = st.times().map(lambda t: t.strftime("%H%M%S"))


def value_of(name: str):
    spec = FIELD_DICTIONARY[name]
    if spec.kind == "N":
        return st.integers(0, 10**spec.width - 1)
    if name in DATE_FIELDS:
        return st.one_of(st.just(""), dates)
    if name in TIME_FIELDS:
        return st.one_of(st.just(""), times)
    return text_within(spec.width)


@st.composite
def data_files(draw) -> DataFile:
    fields = tuple(
        draw(st.lists(st.sampled_from(sorted(FIELD_DICTIONARY)), min_size=1, max_size=12, unique=True))
    )
    if draw(st.booleans()):
        fields = ("InvestorName",) + tuple(f for f in fields if f != "InvestorName")
    record = st.fixed_dictionaries({name: value_of(name) for name in fields})
    code = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=9)
    return DataFile(
        creator=draw(code),
        receiver=draw(code),
        date=draw(dates),
        file_type=draw(st.sampled_from(list(FileType))),
        fields=fields,
        records=tuple(draw(st.lists(record, max_size=8))),
        sender=draw(text_within(8, ASCII)),
        recipient=draw(text_within(8, st.one_of(ASCII, HAN))),
        summary_table=draw(st.text(alphabet="0123456789", min_size=3, max_size=3)),
    )


@ta_settings
@given(data_files())
def test_write_then_read_gives_the_same_file(f: DataFile) -> None:
    """Goal: read(write(f)) == f, the bytes are GB18030 with CRLF lines, and
    writing twice (or re-writing what was read) gives identical bytes."""
    raw = write_data_file(f)
    assert raw == write_data_file(f)
    assert raw.endswith(b"OFDCFEND\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    back = read_data_file(raw, f.name)
    assert back == f
    assert write_data_file(back) == raw
    # The declared order alone decides the bytes, not the records' key order.
    reordered = tuple(dict(reversed(list(r.items()))) for r in f.records)
    assert write_data_file(DataFile(**{**f.__dict__, "records": reordered})) == raw


@ta_settings
@given(st.lists(text_within(40, st.one_of(ANY, HAN)), min_size=1, max_size=5))
def test_any_unicode_name_round_trips_or_is_refused(names) -> None:
    """Goal: InvestorName counts GB18030 bytes (2 for a Han character, 4 for
    rarer ones); whatever the writer accepts reads back unchanged."""
    f = DataFile("01", "ZS001", "20261126", FileType.ACCOUNT_APPLICATIONS, ("InvestorName",),
                 tuple({"InvestorName": n} for n in names))  # fmt: skip
    try:
        raw = write_data_file(f)
    except InvalidInput:
        return
    assert read_data_file(raw) == f
    record_lines = raw.split(b"\r\n")[12:-2]
    assert all(len(line) == 40 for line in record_lines)


def test_chinese_name_takes_two_bytes_a_character() -> None:
    """Goal: 20 Han characters fill InvestorName (40 bytes); 21 do not fit."""
    fields = ("InvestorName", "ApplicationAmount")
    ok = DataFile("01", "ZS001", "20261126", FileType.ACCOUNT_APPLICATIONS, fields,
                  ({"InvestorName": "张" * 20, "ApplicationAmount": 100000},))  # fmt: skip
    raw = write_data_file(ok)
    assert "张".encode("gb18030") * 20 + b"0000000000100000\r\n" in raw
    with pytest.raises(InvalidInput):
        write_data_file(DataFile("01", "ZS001", "20261126", FileType.ACCOUNT_APPLICATIONS, fields,
                                 ({"InvestorName": "张" * 21, "ApplicationAmount": 1},)))  # fmt: skip


def test_number_formats_of_the_profile() -> None:
    """Goal: N16.2 1000.00 is 0000000000100000 and N7.4 1.2345 is 0012345."""
    f = DataFile("01", "ZS001", "20261126", FileType.ORDER_CONFIRMATIONS,
                 ("ApplicationAmount", "NAV"), ({"ApplicationAmount": 100000, "NAV": 12345},))  # fmt: skip
    assert b"\r\n0000000000100000" + b"0012345\r\nOFDCFEND\r\n" in write_data_file(f)


# ------------------------------------------------------------- rejections

FIELDS = ("AppSheetSerialNo", "TransactionDate", "TransactionTime", "InvestorName",
          "ApplicationAmount", "NAV")  # fmt: skip
RECORD = {
    "AppSheetSerialNo": "20261126000001",
    "TransactionDate": "20261126",
    "TransactionTime": "093000",
    "InvestorName": "张三",
    "ApplicationAmount": 1000000,
    "NAV": 12345,
}
GOOD = DataFile("ZS001", "01", "20261126", FileType.ORDER_APPLICATIONS, FIELDS,
                (RECORD, {**RECORD, "AppSheetSerialNo": "20261126000002"}))  # fmt: skip
GOOD_RAW = write_data_file(GOOD)
LINES = GOOD_RAW.split(b"\r\n")[:-1]  # 0-based: 0 magic ... 9 count, 10..15 names, 16 count, 17-18 records
RECORD_LINE = LINES[17]


def rebuild(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def replace_line(index: int, new: bytes) -> bytes:
    lines = list(LINES)
    lines[index] = new
    return rebuild(lines)


def replace_in_record(old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and old in RECORD_LINE
    return replace_line(17, RECORD_LINE.replace(old, new, 1))


def test_good_file_reads() -> None:
    """Goal: the base case of the rejection table is itself valid."""
    assert read_data_file(GOOD_RAW, GOOD.name) == GOOD
    assert read_data_file(GOOD_RAW.rstrip(b"\r\n")) == GOOD  # final CRLF optional


CASES = [
    ("bare LF", GOOD_RAW.replace(b"\r\n", b"\n", 3), FileError.BAD_LINE_END, 1),
    ("bare CR in a record", replace_in_record(b"093000", b"09\r000"), FileError.BAD_LINE_END, 18),
    ("invalid GB18030 byte", replace_in_record("张三".encode("gb18030"), b"\xff\xff\xff\xff"),
     FileError.BAD_ENCODING, 18),
    ("character split by a field boundary",
     replace_in_record("张三".encode("gb18030") + b" " * 36 + b"00",
                       b"A" * 39 + "张".encode("gb18030") + b"0"),
     FileError.BAD_ENCODING, 18),
    ("wrong magic", replace_line(0, b"OFDCFDAX"), FileError.BAD_HEADER, 1),
    ("version 20", replace_line(1, b"20  "), FileError.BAD_HEADER, 2),
    ("short creator line", replace_line(2, b"ZS001"), FileError.BAD_HEADER, 3),
    ("creator with a dash", replace_line(2, b"ZS-01    "), FileError.BAD_HEADER, 3),
    ("summary table not digits", replace_line(5, b"0A0"), FileError.BAD_HEADER, 6),
    ("unknown file type", replace_line(6, b"09"), FileError.BAD_HEADER, 7),
    ("no such day in the header", replace_line(4, b"20261131"), FileError.BAD_DATE, 5),
    ("no such day in a record", replace_in_record(b"20261126093000", b"20260230093000"),
     FileError.BAD_DATE, 18),
    ("no such time in a record", replace_in_record(b"093000", b"246000"), FileError.BAD_DATE, 18),
    ("field count not digits", replace_line(9, b"0A6"), FileError.BAD_FIELD_COUNT, 10),
    ("field count zero", replace_line(9, b"000"), FileError.BAD_FIELD_COUNT, 10),
    ("field count too large", replace_line(9, b"007"), FileError.BAD_FIELD_COUNT, 17),
    ("unknown field", replace_line(12, b"TransactionHour"), FileError.UNKNOWN_FIELD, 13),
    ("field declared twice", replace_line(12, b"AppSheetSerialNo"), FileError.DUPLICATE_FIELD, 13),
    ("record count says 3", replace_line(16, b"00000003"), FileError.BAD_RECORD_COUNT, 17),
    ("record count says 1", replace_line(16, b"00000001"), FileError.BAD_RECORD_COUNT, 17),
    ("record count 7 digits", replace_line(16, b"0000002"), FileError.BAD_RECORD_COUNT, 17),
    ("record one byte long", replace_line(17, RECORD_LINE + b"0"), FileError.BAD_RECORD_LENGTH, 18),
    ("record one byte short", replace_line(17, RECORD_LINE[:-1]), FileError.BAD_RECORD_LENGTH, 18),
    ("name padded to 40 characters, not bytes",
     replace_line(18, RECORD_LINE.replace("张三".encode("gb18030") + b" " * 36,
                                          "张三丰".encode("gb18030") + b" " * 37)),
     FileError.BAD_RECORD_LENGTH, 19),
    ("space in a number", replace_in_record(b"0000000001000000", b"000000000100000 "),
     FileError.BAD_NUMBER, 18),
    ("minus in a number", replace_in_record(b"0000000001000000", b"-000000001000000"),
     FileError.BAD_NUMBER, 18),
    ("full-width digit in a number", replace_in_record(b"0012345", "１".encode("gb18030") + b"12345"),
     FileError.BAD_NUMBER, 18),
    ("control character in text", replace_in_record(b"20261126000001", b"2026112600000\x01"),
     FileError.BAD_TEXT, 18),
    ("no trailer", rebuild(LINES[:-1]), FileError.BAD_TRAILER, 19),
    ("line after the trailer", rebuild(LINES + [b""]), FileError.BAD_TRAILER, 21),
    ("lowercase trailer", replace_line(19, b"ofdcfend"), FileError.BAD_TRAILER, 20),
    ("empty file", b"", FileError.BAD_HEADER, 1),
    ("header only", rebuild(LINES[:5]), FileError.BAD_HEADER, 6),
]


@pytest.mark.parametrize("data, code, line", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_file_is_rejected_whole(data: bytes, code: FileError, line: int) -> None:
    """Goal: each malformed case rejects the whole file with its stable code
    and the line of the defect."""
    with pytest.raises(FileRejected) as info:
        read_data_file(data)
    assert (info.value.code, info.value.line) == (code, line), str(info.value)
    assert info.value.code.value in str(info.value)


@pytest.mark.parametrize(
    "name, code",
    [
        ("OFD_ZS001_01_20261127_03.TXT", FileError.NAME_MISMATCH),
        ("OFD_ZS001_01_20261126_01.TXT", FileError.NAME_MISMATCH),
        ("OFD_01_ZS001_20261126_03.TXT", FileError.NAME_MISMATCH),
        ("OFD_ZS001_01_20261126_03.txt", FileError.BAD_FILE_NAME),
        ("OFD_ZS001_01_20261126_09.TXT", FileError.BAD_FILE_NAME),
        ("OFD_ZS001_01_20261132_03.TXT", FileError.BAD_DATE),
        ("orders.txt", FileError.BAD_FILE_NAME),
    ],
)
def test_file_name_must_agree_with_header(name: str, code: FileError) -> None:
    """Goal: a file whose name disagrees with its header, or that is not an
    OFD_ name, is rejected."""
    assert GOOD.name == "OFD_ZS001_01_20261126_03.TXT"
    with pytest.raises(FileRejected) as info:
        read_data_file(GOOD_RAW, name)
    assert info.value.code == code


@ta_settings
@given(st.data())
def test_damaged_bytes_raise_only_file_rejected(data) -> None:
    """Goal: any byte damage either still parses or is a FileRejected, never
    another exception (the reader has no crash path on input)."""
    raw = bytearray(GOOD_RAW)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "set":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw.insert(pos, data.draw(st.integers(0, 255)))
        else:
            del raw[pos]
    try:
        read_data_file(bytes(raw))
    except FileRejected as exc:
        assert isinstance(exc.code, FileError)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: {**r, "NAV": -1},
        lambda r: {**r, "NAV": 10**7},
        lambda r: {**r, "NAV": 1.2345},
        lambda r: {**r, "ApplicationAmount": True},
        lambda r: {**r, "InvestorName": "张三 "},
        lambda r: {**r, "InvestorName": "a\r\nb"},
        lambda r: {**r, "InvestorName": "\ud800"},
        lambda r: {**r, "AppSheetSerialNo": "x" * 25},
        lambda r: {**r, "TransactionDate": "20261131"},
        lambda r: {**r, "TransactionTime": "9300"},
        lambda r: {k: v for k, v in r.items() if k != "NAV"},
        lambda r: {**r, "Extra": "x"},
    ],
)
def test_writer_refuses_what_it_cannot_write_exactly(change) -> None:
    """Goal: the writer never truncates or pads a value into something else."""
    bad = DataFile("ZS001", "01", "20261126", FileType.ORDER_APPLICATIONS, FIELDS, (change(RECORD),))
    with pytest.raises((InvalidInput, TypeError)):
        write_data_file(bad)


def test_writer_refuses_bad_headers() -> None:
    """Goal: unknown or duplicate fields and bad codes/dates are refused."""
    for f in [
        DataFile("ZS001", "01", "20261126", FileType.ORDER_APPLICATIONS, ("Nope",)),
        DataFile("ZS001", "01", "20261126", FileType.ORDER_APPLICATIONS, ("NAV", "NAV")),
        DataFile("ZS001", "01", "20261126", FileType.ORDER_APPLICATIONS, ()),
        DataFile("ZS_01", "01", "20261126", FileType.ORDER_APPLICATIONS, ("NAV",)),
        DataFile("ZS001", "01", "2026112", FileType.ORDER_APPLICATIONS, ("NAV",)),
        DataFile("ZS001", "01", "20261126", FileType.ORDER_APPLICATIONS, ("NAV",), summary_table="1"),
    ]:
        with pytest.raises(InvalidInput):
            write_data_file(f)


def test_standard_layouts_use_only_dictionary_fields() -> None:
    """Goal: the project's layouts for files 01-07 are writable as declared."""
    assert set(STANDARD_FIELDS) == set(FileType)
    for file_type, fields in STANDARD_FIELDS.items():
        assert len(set(fields)) == len(fields)
        empty = DataFile("01", "ZS001", "20261126", file_type, fields)
        assert read_data_file(write_data_file(empty)) == empty


# ------------------------------------------------------------- index files


def test_index_round_trip_is_sorted_and_exact() -> None:
    """Goal: the index lists its files sorted, with a 3-digit count, and reads back."""
    names = [data_file_name("01", "ZS001", "20261126", t) for t in
             (FileType.FUND_STATUS, FileType.ACCOUNT_CONFIRMATIONS, FileType.ORDER_CONFIRMATIONS)]  # fmt: skip
    index = IndexFile("01", "ZS001", "20261126", tuple(names))
    raw = write_index_file(index)
    assert raw == write_index_file(IndexFile("01", "ZS001", "20261126", tuple(reversed(names))))
    assert raw.split(b"\r\n") == [
        b"OFDCFIDX", b"21  ", b"01       ", b"ZS001    ", b"20261126", b"003",
        b"OFD_01_ZS001_20261126_02.TXT", b"OFD_01_ZS001_20261126_04.TXT",
        b"OFD_01_ZS001_20261126_07.TXT", b"OFDCFEND", b"",
    ]  # fmt: skip
    assert read_index_file(raw, index_file_name("01", "ZS001", "20261126")) == index


INDEX_RAW = write_index_file(
    IndexFile("ZS001", "01", "20261126", ("OFD_ZS001_01_20261126_01.TXT", "OFD_ZS001_01_20261126_03.TXT"))
)
INDEX_LINES = INDEX_RAW.split(b"\r\n")[:-1]


@pytest.mark.parametrize(
    "lines, code",
    [
        (INDEX_LINES[:5] + [b"003"] + INDEX_LINES[6:], FileError.BAD_RECORD_COUNT),
        (INDEX_LINES[:5] + [b"02"] + INDEX_LINES[6:], FileError.BAD_RECORD_COUNT),
        (INDEX_LINES[:7] + [INDEX_LINES[6]] + INDEX_LINES[8:], FileError.DUPLICATE_ENTRY),
        (INDEX_LINES[:7] + [b"OFD_ZS001_01_20261125_03.TXT"] + INDEX_LINES[8:], FileError.NAME_MISMATCH),
        (INDEX_LINES[:7] + [b"OFD_ZS002_01_20261126_03.TXT"] + INDEX_LINES[8:], FileError.NAME_MISMATCH),
        (INDEX_LINES[:7] + [b"orders.txt"] + INDEX_LINES[8:], FileError.BAD_FILE_NAME),
        ([b"OFDCFDAT"] + INDEX_LINES[1:], FileError.BAD_HEADER),
        (INDEX_LINES[:-1], FileError.BAD_TRAILER),
    ],
)
def test_malformed_index_is_rejected(lines, code) -> None:
    """Goal: an index with a wrong count, a repeated, foreign or malformed
    entry, or a bad header/trailer is rejected whole."""
    assert read_index_file(INDEX_RAW).file_names[0] == "OFD_ZS001_01_20261126_01.TXT"
    with pytest.raises(FileRejected) as info:
        read_index_file(rebuild(lines))
    assert info.value.code == code


def test_file_names() -> None:
    """Goal: names follow OFD_/OFI_<creator>_<receiver>_<date>[_<type>].TXT."""
    assert data_file_name("01", "ZS001", "20261126", FileType.ORDER_CONFIRMATIONS) == "OFD_01_ZS001_20261126_04.TXT"
    assert index_file_name("01", "ZS001", "20261126") == "OFI_01_ZS001_20261126.TXT"
    parts = parse_data_file_name("OFD_01_ZS001_20261126_04.TXT")
    assert (parts.creator, parts.receiver, parts.date, parts.file_type) == (
        "01", "ZS001", "20261126", FileType.ORDER_CONFIRMATIONS)  # fmt: skip
    with pytest.raises(InvalidInput):
        data_file_name("0_1", "ZS001", "20261126", FileType.ORDER_CONFIRMATIONS)
