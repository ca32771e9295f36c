"""Profile-21 data-exchange files: fixed-width data files and the index.

Layout of a data file (GB18030 text, every line ended by CRLF)::

    OFDCFDAT                     magic, 8
    21__                         version, left-aligned, 4
    <creator, 9>                 codes left-aligned, space-padded
    <receiver, 9>
    YYYYMMDD                     the business date
    000                          summary table number, 3 digits
    04                           file type (ta.codes.FileType)
    <sender, 8>
    <recipient, 8>
    019                          field count, 3 digits
    AppSheetSerialNo             one declared field name a line
    ...
    00000005                     record count, 8 digits
    <record>                     the declared fields concatenated
    ...
    OFDCFEND

The index ``OFI_<creator>_<receiver>_<YYYYMMDD>.TXT`` is ``OFDCFIDX``,
version, creator, receiver, date, a 3-digit file count, one data-file name a
line and ``OFDCFEND``.

Field values: ``A`` text is a ``str`` (left-aligned, space-padded to a width
counted in GB18030 BYTES, so a Chinese character takes two; trailing spaces
are padding and are dropped on reading). ``N w.d`` is an ``int`` in its
implied-decimal unit (``N16.2`` 1000.00 is ``100000``; ``N7.4`` 1.2345 is
``12345``), right-aligned and zero-padded, never negative. A blank date field
reads as ``""``.

Reading is all or nothing: the first defect rejects the whole file with
``ta.errors.FileRejected(code, reason, line)``; the codes are listed in
``ta.errors``. The checks run in a fixed order, so a file with several defects
always gets the same code: the given file name's form, line ends, encoding
(per line), header (magic,
version, codes, date, table number, type), field count, field names, record
count line, trailer, number of records, then each record in turn (length,
encoding of each field, text, numbers, dates), then the file name against the
header.

Writing is deterministic: the same ``DataFile`` always gives the same bytes
(fields in declared order, records in the given order, index entries sorted).
A value the writer cannot represent exactly is refused with ``InvalidInput``
(never truncated): too wide, negative, not encodable in GB18030, a control
character, or a trailing space (which the reader could not give back).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from ta.codes import FileType
from ta.errors import FileError, FileRejected, InvalidInput

ENCODING = "gb18030"
CRLF = b"\r\n"
VERSION = "21"
DATA_MAGIC = "OFDCFDAT"
INDEX_MAGIC = "OFDCFIDX"
TRAILER = "OFDCFEND"

VERSION_WIDTH = 4
CODE_WIDTH = 9  # creator / receiver
DATE_WIDTH = 8
SUMMARY_TABLE_WIDTH = 3
FILE_TYPE_WIDTH = 2
PARTY_WIDTH = 8  # sender / recipient
FIELD_COUNT_WIDTH = 3
RECORD_COUNT_WIDTH = 8
INDEX_COUNT_WIDTH = 3

FIELD_COUNT_MAX = 10**FIELD_COUNT_WIDTH - 1
RECORD_COUNT_MAX = 10**RECORD_COUNT_WIDTH - 1
INDEX_COUNT_MAX = 10**INDEX_COUNT_WIDTH - 1

Value = Union[str, int]
Record = Mapping[str, Value]


@dataclass(frozen=True)
class FieldSpec:
    """One entry of the field dictionary: ``A`` text or ``N`` number."""

    name: str
    kind: str  # "A" or "N"
    width: int  # bytes in the record
    decimals: int = 0  # implied decimals of an N field

    def __post_init__(self) -> None:
        assert self.kind in ("A", "N") and self.width > 0
        assert self.kind == "N" or self.decimals == 0


def _a(name: str, width: int) -> FieldSpec:
    return FieldSpec(name, "A", width)


def _n(name: str, width: int, decimals: int) -> FieldSpec:
    return FieldSpec(name, "N", width, decimals)


# The field dictionary of TA.md. A reader knows no other field.
FIELD_DICTIONARY: Mapping[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        _a("AppSheetSerialNo", 24),
        _a("TransactionDate", 8),
        _a("TransactionTime", 6),
        _a("TransactionCfmDate", 8),
        _a("FundCode", 6),
        _a("ShareClass", 1),
        _a("BusinessCode", 3),
        _a("TransactionAccountID", 17),
        _a("TAAccountID", 12),
        _a("DistributorCode", 9),
        _n("ApplicationAmount", 16, 2),
        _n("ApplicationVol", 16, 2),
        _n("ConfirmedAmount", 16, 2),
        _n("ConfirmedVol", 16, 2),
        _n("Charge", 10, 2),
        _n("AgencyFee", 10, 2),
        _n("NAV", 7, 4),
        _a("DefDividendMethod", 1),
        _a("LargeRedemptionFlag", 1),
        _n("DiscountRateOfCommission", 5, 4),
        _a("CurrencyType", 3),
        _a("IndividualOrInstitution", 1),
        _a("InvestorName", 40),
        _a("CertificateType", 1),
        _a("CertificateNo", 30),
        _a("ReturnCode", 4),
        _a("ErrorDetail", 60),
        _a("TASerialNO", 20),
        _n("AvailableVol", 16, 2),
        _n("TotalVolOfDistributorInTA", 16, 2),
        _n("TotalFrozenVol", 16, 2),
        _a("RegistrationDate", 8),
        _a("XRDate", 8),
        _n("DividendPerUnit", 10, 4),
        _n("DrawBonusUnit", 10, 0),
        _n("BasisforCalculatingDividend", 16, 2),
        _n("DividendAmount", 16, 2),
        _n("VolOfDividendforReinvestment", 16, 2),
        _n("TotalFundVol", 16, 2),
        _a("FundStatus", 1),
        _n("FundIncome", 8, 5),
        _a("UpdateDate", 8),
    )
}

# A fields whose non-blank value must be a real date / time.
DATE_FIELDS = frozenset(
    {"TransactionDate", "TransactionCfmDate", "RegistrationDate", "XRDate", "UpdateDate"}
)
TIME_FIELDS = frozenset({"TransactionTime"})

# The project's layouts for each file type. The TA writes these; a reader
# still takes the order (and the set) from the file's own declaration.
STANDARD_FIELDS: Mapping[FileType, tuple[str, ...]] = {
    FileType.ACCOUNT_APPLICATIONS: (
        "AppSheetSerialNo", "TransactionDate", "TransactionTime", "BusinessCode",
        "DistributorCode", "TransactionAccountID", "TAAccountID",
        "IndividualOrInstitution", "InvestorName", "CertificateType", "CertificateNo",
    ),
    FileType.ACCOUNT_CONFIRMATIONS: (
        "AppSheetSerialNo", "TransactionDate", "TransactionCfmDate", "BusinessCode",
        "DistributorCode", "TransactionAccountID", "TAAccountID", "ReturnCode",
        "ErrorDetail", "TASerialNO",
    ),
    FileType.ORDER_APPLICATIONS: (
        "AppSheetSerialNo", "TransactionDate", "TransactionTime", "FundCode", "ShareClass",
        "BusinessCode", "DistributorCode", "TransactionAccountID", "TAAccountID",
        "ApplicationAmount", "ApplicationVol", "DefDividendMethod", "LargeRedemptionFlag",
        "DiscountRateOfCommission", "CurrencyType",
    ),
    FileType.ORDER_CONFIRMATIONS: (
        "AppSheetSerialNo", "TransactionDate", "TransactionCfmDate", "FundCode",
        "ShareClass", "BusinessCode", "DistributorCode", "TransactionAccountID",
        "TAAccountID", "ApplicationAmount", "ApplicationVol", "ConfirmedAmount",
        "ConfirmedVol", "Charge", "AgencyFee", "NAV", "ReturnCode", "ErrorDetail",
        "TASerialNO",
    ),
    FileType.SHARE_BALANCES: (
        "TransactionCfmDate", "FundCode", "ShareClass", "DistributorCode",
        "TransactionAccountID", "TAAccountID", "AvailableVol",
        "TotalVolOfDistributorInTA", "TotalFrozenVol",
    ),
    FileType.DIVIDENDS: (
        "TransactionCfmDate", "FundCode", "ShareClass", "BusinessCode", "DistributorCode",
        "TransactionAccountID", "TAAccountID", "RegistrationDate", "XRDate",
        "DividendPerUnit", "BasisforCalculatingDividend", "DividendAmount",
        "VolOfDividendforReinvestment", "DefDividendMethod", "NAV", "TASerialNO",
    ),
    FileType.FUND_STATUS: (
        "FundCode", "TransactionCfmDate", "NAV", "TotalFundVol", "FundStatus",
        "FundIncome", "UpdateDate",
    ),
}  # fmt: skip

_CODE = re.compile(r"[0-9A-Za-z]{1,9}")
_CODE_TEXT = r"[0-9A-Za-z]{1,9}"
_DATA_NAME = re.compile(rf"OFD_({_CODE_TEXT})_({_CODE_TEXT})_(\d{{8}})_(\d{{2}})\.TXT")
_INDEX_NAME = re.compile(rf"OFI_({_CODE_TEXT})_({_CODE_TEXT})_(\d{{8}})\.TXT")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_valid_date(text: str) -> bool:
    """``YYYYMMDD`` naming a real calendar day."""
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return False
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def is_valid_time(text: str) -> bool:
    """``HHMMSS`` from 000000 to 235959."""
    if len(text) != 6 or not text.isascii() or not text.isdigit():
        return False
    return int(text[:2]) < 24 and int(text[2:4]) < 60 and int(text[4:]) < 60


def record_width(fields: Sequence[str]) -> int:
    """Bytes of one record with these declared fields."""
    return sum(FIELD_DICTIONARY[name].width for name in fields)


# ---------------------------------------------------------------- file names


@dataclass(frozen=True)
class DataFileName:
    creator: str
    receiver: str
    date: str
    file_type: FileType

    def __str__(self) -> str:
        return data_file_name(self.creator, self.receiver, self.date, self.file_type)


def data_file_name(creator: str, receiver: str, date: str, file_type: FileType) -> str:
    """``OFD_<creator>_<receiver>_<YYYYMMDD>_<type>.TXT``."""
    _check_code("creator", creator)
    _check_code("receiver", receiver)
    _check_date("date", date)
    return f"OFD_{creator}_{receiver}_{date}_{FileType(file_type).value}.TXT"


def index_file_name(creator: str, receiver: str, date: str) -> str:
    """``OFI_<creator>_<receiver>_<YYYYMMDD>.TXT``."""
    _check_code("creator", creator)
    _check_code("receiver", receiver)
    _check_date("date", date)
    return f"OFI_{creator}_{receiver}_{date}.TXT"


def parse_data_file_name(name: str) -> DataFileName:
    """The parts of a data file's name; FileRejected(BAD_FILE_NAME) if not one."""
    match = _DATA_NAME.fullmatch(name)
    if match is None:
        raise FileRejected(FileError.BAD_FILE_NAME, f"not an OFD_ data file name: {name!r}")
    creator, receiver, date, type_text = match.groups()
    if not is_valid_date(date):
        raise FileRejected(FileError.BAD_DATE, f"file name date {date} is not a real day")
    try:
        file_type = FileType(type_text)
    except ValueError:
        raise FileRejected(
            FileError.BAD_FILE_NAME, f"unknown file type {type_text} in {name!r}"
        ) from None
    return DataFileName(creator, receiver, date, file_type)


def parse_index_file_name(name: str) -> tuple[str, str, str]:
    """(creator, receiver, date) of an index name; FileRejected if not one."""
    match = _INDEX_NAME.fullmatch(name)
    if match is None:
        raise FileRejected(FileError.BAD_FILE_NAME, f"not an OFI_ index file name: {name!r}")
    creator, receiver, date = match.groups()
    if not is_valid_date(date):
        raise FileRejected(FileError.BAD_DATE, f"file name date {date} is not a real day")
    return creator, receiver, date


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class DataFile:
    """A profile-21 data file: header values, declared fields, records.

    ``records`` are mappings from every declared field name to its value
    (``str`` for A fields, ``int`` in implied-decimal units for N fields)."""

    creator: str
    receiver: str
    date: str
    file_type: FileType
    fields: tuple[str, ...]
    records: tuple[Record, ...] = ()
    sender: str = ""
    recipient: str = ""
    summary_table: str = "000"
    version: str = VERSION

    @property
    def name(self) -> str:
        return data_file_name(self.creator, self.receiver, self.date, self.file_type)


@dataclass(frozen=True)
class IndexFile:
    """A profile-21 index: the data files of one creator/receiver/date.
    Names are kept sorted, so the written index does not depend on the order
    in which the caller produced the files."""

    creator: str
    receiver: str
    date: str
    file_names: tuple[str, ...] = field(default=())
    version: str = VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "file_names", tuple(sorted(self.file_names)))

    @property
    def name(self) -> str:
        return index_file_name(self.creator, self.receiver, self.date)


# ---------------------------------------------------------------- writing


def _check_code(what: str, code: str) -> None:
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        raise InvalidInput(f"{what} must be 1-9 letters or digits, got {code!r}")


def _check_date(what: str, date: str) -> None:
    if not isinstance(date, str) or not is_valid_date(date):
        raise InvalidInput(f"{what} must be a real YYYYMMDD date, got {date!r}")


def _encode_text(what: str, value: object, width: int) -> bytes:
    """A text value left-aligned and space-padded to ``width`` bytes."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be str, got {type(value).__name__}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} holds a control character: {value!r}")
    if value.endswith(" "):
        raise InvalidInput(f"{what} ends with a space, which reads back as padding: {value!r}")
    try:
        raw = value.encode(ENCODING)
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not encodable in GB18030: {value!r}") from None
    if raw.decode(ENCODING) != value:
        raise InvalidInput(f"{what} does not survive GB18030 unchanged: {value!r}")
    if len(raw) > width:
        raise InvalidInput(f"{what} takes {len(raw)} bytes, more than its width {width}")
    return raw + b" " * (width - len(raw))


def _encode_value(spec: FieldSpec, value: object) -> bytes:
    what = f"field {spec.name}"
    if spec.kind == "N":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{what} must be an int in 1/10^{spec.decimals}, got {value!r}")
        if not 0 <= value < 10**spec.width:
            raise InvalidInput(f"{what} value {value} does not fit N{spec.width}.{spec.decimals}")
        return str(value).rjust(spec.width, "0").encode("ascii")
    raw = _encode_text(what, value, spec.width)
    if value and spec.name in DATE_FIELDS and not is_valid_date(value):  # type: ignore[arg-type]
        raise InvalidInput(f"{what} is not a real YYYYMMDD date: {value!r}")
    if value and spec.name in TIME_FIELDS and not is_valid_time(value):  # type: ignore[arg-type]
        raise InvalidInput(f"{what} is not a HHMMSS time: {value!r}")
    return raw


def _check_fields(fields: Sequence[str]) -> None:
    if not 1 <= len(fields) <= FIELD_COUNT_MAX:
        raise InvalidInput(f"a file declares 1..{FIELD_COUNT_MAX} fields, got {len(fields)}")
    for name in fields:
        if name not in FIELD_DICTIONARY:
            raise InvalidInput(f"unknown field {name!r}")
    if len(set(fields)) != len(fields):
        raise InvalidInput(f"a field is declared twice in {fields!r}")


def encode_record(fields: Sequence[str], record: Record) -> bytes:
    """One record's bytes: every declared field, in order, no separators."""
    if set(record) != set(fields):
        missing = sorted(set(fields) - set(record))
        extra = sorted(set(record) - set(fields))
        raise InvalidInput(
            f"record fields differ from the declared: missing {missing}, extra {extra}"
        )
    return b"".join(_encode_value(FIELD_DICTIONARY[name], record[name]) for name in fields)


def write_data_file(data_file: DataFile) -> bytes:
    """The bytes of ``data_file`` (deterministic; InvalidInput if unrepresentable)."""
    f = data_file
    _check_code("creator", f.creator)
    _check_code("receiver", f.receiver)
    _check_date("date", f.date)
    if f.version != VERSION:
        raise InvalidInput(f"only version {VERSION} is written, got {f.version!r}")
    table = f.summary_table
    if not (len(table) == SUMMARY_TABLE_WIDTH and table.isascii() and table.isdigit()):
        raise InvalidInput(f"summary table must be 3 digits, got {f.summary_table!r}")
    file_type = FileType(f.file_type)
    fields = tuple(f.fields)
    _check_fields(fields)
    if len(f.records) > RECORD_COUNT_MAX:
        raise InvalidInput(f"at most {RECORD_COUNT_MAX} records in a file")
    lines = [
        DATA_MAGIC.encode("ascii"),
        _encode_text("version", f.version, VERSION_WIDTH),
        _encode_text("creator", f.creator, CODE_WIDTH),
        _encode_text("receiver", f.receiver, CODE_WIDTH),
        f.date.encode("ascii"),
        f.summary_table.encode("ascii"),
        file_type.value.encode("ascii"),
        _encode_text("sender", f.sender, PARTY_WIDTH),
        _encode_text("recipient", f.recipient, PARTY_WIDTH),
        str(len(fields)).rjust(FIELD_COUNT_WIDTH, "0").encode("ascii"),
        *(name.encode("ascii") for name in fields),
        str(len(f.records)).rjust(RECORD_COUNT_WIDTH, "0").encode("ascii"),
        *(encode_record(fields, record) for record in f.records),
        TRAILER.encode("ascii"),
    ]
    return b"".join(line + CRLF for line in lines)


def write_index_file(index: IndexFile) -> bytes:
    """The bytes of ``index``; every entry must be a data file of the same
    creator, receiver and date (InvalidInput otherwise)."""
    _check_code("creator", index.creator)
    _check_code("receiver", index.receiver)
    _check_date("date", index.date)
    if index.version != VERSION:
        raise InvalidInput(f"only version {VERSION} is written, got {index.version!r}")
    if len(index.file_names) > INDEX_COUNT_MAX:
        raise InvalidInput(f"at most {INDEX_COUNT_MAX} files in an index")
    if len(set(index.file_names)) != len(index.file_names):
        raise InvalidInput("an index lists a file twice")
    for name in index.file_names:
        try:
            parts = parse_data_file_name(name)
        except FileRejected as exc:
            raise InvalidInput(exc.reason) from None
        index_key = (index.creator, index.receiver, index.date)
        if (parts.creator, parts.receiver, parts.date) != index_key:
            raise InvalidInput(f"{name} is not a file of this index")
    lines = [
        INDEX_MAGIC.encode("ascii"),
        _encode_text("version", index.version, VERSION_WIDTH),
        _encode_text("creator", index.creator, CODE_WIDTH),
        _encode_text("receiver", index.receiver, CODE_WIDTH),
        index.date.encode("ascii"),
        str(len(index.file_names)).rjust(INDEX_COUNT_WIDTH, "0").encode("ascii"),
        *(name.encode("ascii") for name in index.file_names),
        TRAILER.encode("ascii"),
    ]
    return b"".join(line + CRLF for line in lines)


# ---------------------------------------------------------------- reading


class _Lines:
    """The CRLF-split raw lines of a file, consumed front to back."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a file is read from bytes, got {type(data).__name__}")
        data = bytes(data)
        lines = data.split(CRLF)
        if lines and lines[-1] == b"":
            lines.pop()  # the CRLF that ends the last line
        # The final CRLF is optional; a bare CR or LF anywhere is not.
        for number, raw in enumerate(lines, start=1):
            if b"\r" in raw or b"\n" in raw:
                raise FileRejected(
                    FileError.BAD_LINE_END, "a line ends with a bare CR or LF, not CRLF", number
                )
        for number, raw in enumerate(lines, start=1):
            try:
                raw.decode(ENCODING)
            except UnicodeDecodeError as exc:
                raise FileRejected(
                    FileError.BAD_ENCODING, f"not GB18030 at byte {exc.start} of the line", number
                ) from None
        self.raw = lines
        self.position = 0  # index of the next line; its number is position + 1

    @property
    def number(self) -> int:
        return self.position + 1

    def remaining(self) -> int:
        return len(self.raw) - self.position

    def take(self, what: str, missing: FileError = FileError.BAD_HEADER) -> bytes:
        if self.position >= len(self.raw):
            raise FileRejected(missing, f"file ends before the {what}", self.number)
        line = self.raw[self.position]
        self.position += 1
        return line


def _header_text(lines: _Lines, what: str, width: int) -> str:
    raw = lines.take(what)
    if len(raw) != width:
        raise FileRejected(
            FileError.BAD_HEADER,
            f"{what} line must be {width} bytes, got {len(raw)}",
            lines.position,
        )
    return raw.decode(ENCODING).rstrip(" ")


def _header_code(lines: _Lines, what: str) -> str:
    code = _header_text(lines, what, CODE_WIDTH)
    if _CODE.fullmatch(code) is None:
        raise FileRejected(
            FileError.BAD_HEADER,
            f"{what} must be 1-9 letters or digits, got {code!r}",
            lines.position,
        )
    return code


def _header_magic(lines: _Lines, magic: str) -> None:
    raw = lines.take("magic")
    if raw != magic.encode("ascii"):
        raise FileRejected(
            FileError.BAD_HEADER, f"first line must be {magic}, got {raw[:20]!r}", lines.position
        )


def _header_version(lines: _Lines) -> str:
    version = _header_text(lines, "version", VERSION_WIDTH)
    if version != VERSION:
        raise FileRejected(
            FileError.BAD_HEADER, f"version must be {VERSION}, got {version!r}", lines.position
        )
    return version


def _header_date(lines: _Lines) -> str:
    date = _header_text(lines, "date", DATE_WIDTH)
    if not is_valid_date(date):
        raise FileRejected(
            FileError.BAD_DATE, f"date {date!r} is not a real YYYYMMDD day", lines.position
        )
    return date


def _header_count(lines: _Lines, what: str, width: int, code: FileError) -> int:
    raw = lines.take(what, missing=code)
    if len(raw) != width or not raw.isdigit():
        raise FileRejected(code, f"{what} must be {width} digits, got {raw[:20]!r}", lines.position)
    return int(raw)


def _trailer(lines: _Lines) -> None:
    """The last line must be OFDCFEND; returns with it removed."""
    if lines.remaining() <= 0 or lines.raw[-1] != TRAILER.encode("ascii"):
        raise FileRejected(
            FileError.BAD_TRAILER, f"the file does not end with {TRAILER}", len(lines.raw)
        )
    lines.raw = lines.raw[:-1]


def _decode_record(
    raw: bytes, fields: tuple[str, ...], width: int, number: int
) -> dict[str, Value]:
    if len(raw) != width:
        raise FileRejected(
            FileError.BAD_RECORD_LENGTH,
            f"record is {len(raw)} bytes, the declared fields need {width}",
            number,
        )
    record: dict[str, Value] = {}
    offset = 0
    for name in fields:
        spec = FIELD_DICTIONARY[name]
        chunk = raw[offset : offset + spec.width]
        offset += spec.width
        if spec.kind == "N":
            if not chunk.isdigit():  # bytes.isdigit: ASCII 0-9 only
                raise FileRejected(
                    FileError.BAD_NUMBER, f"{name} must be digits, got {chunk!r}", number
                )
            record[name] = int(chunk)
            continue
        try:
            text = chunk.decode(ENCODING)
        except UnicodeDecodeError:
            raise FileRejected(
                FileError.BAD_ENCODING,
                f"{name} splits or holds an invalid GB18030 character",
                number,
            ) from None
        text = text.rstrip(" ")
        if _CONTROL.search(text):
            raise FileRejected(FileError.BAD_TEXT, f"{name} holds a control character", number)
        if text and name in DATE_FIELDS and not is_valid_date(text):
            raise FileRejected(
                FileError.BAD_DATE, f"{name} {text!r} is not a real YYYYMMDD day", number
            )
        if text and name in TIME_FIELDS and not is_valid_time(text):
            raise FileRejected(FileError.BAD_DATE, f"{name} {text!r} is not a HHMMSS time", number)
        record[name] = text
    return record


def read_data_file(data: bytes, name: str | None = None) -> DataFile:
    """Parse a data file; FileRejected (whole file) on the first defect.

    When ``name`` is given it must be the file's OFD_ name and agree with the
    header's creator, receiver, date and type."""
    parsed_name = parse_data_file_name(name) if name is not None else None
    lines = _Lines(data)
    _header_magic(lines, DATA_MAGIC)
    version = _header_version(lines)
    creator = _header_code(lines, "creator")
    receiver = _header_code(lines, "receiver")
    date = _header_date(lines)
    summary_table = _header_text(lines, "summary table number", SUMMARY_TABLE_WIDTH)
    table_ok = summary_table.isascii() and summary_table.isdigit()
    if not table_ok or len(summary_table) != SUMMARY_TABLE_WIDTH:
        raise FileRejected(
            FileError.BAD_HEADER, "summary table number must be 3 digits", lines.position
        )
    type_text = _header_text(lines, "file type", FILE_TYPE_WIDTH)
    try:
        file_type = FileType(type_text)
    except ValueError:
        raise FileRejected(
            FileError.BAD_HEADER, f"unknown file type {type_text!r}", lines.position
        ) from None
    sender = _header_text(lines, "sender", PARTY_WIDTH)
    recipient = _header_text(lines, "recipient", PARTY_WIDTH)
    field_count = _header_count(lines, "field count", FIELD_COUNT_WIDTH, FileError.BAD_FIELD_COUNT)
    if field_count < 1:
        raise FileRejected(
            FileError.BAD_FIELD_COUNT, "a file declares at least one field", lines.position
        )
    fields: list[str] = []
    for _ in range(field_count):
        field_name = lines.take("declared field names", missing=FileError.BAD_FIELD_COUNT)
        text = field_name.decode(ENCODING).rstrip(" ")
        if text.isascii() and text.isdigit():
            raise FileRejected(
                FileError.BAD_FIELD_COUNT,
                f"field count says {field_count}, the names end after {len(fields)}",
                lines.position,
            )
        if text not in FIELD_DICTIONARY:
            raise FileRejected(
                FileError.UNKNOWN_FIELD, f"unknown field {text[:40]!r}", lines.position
            )
        if text in fields:
            raise FileRejected(
                FileError.DUPLICATE_FIELD, f"field {text} declared twice", lines.position
            )
        fields.append(text)
    record_count = _header_count(
        lines, "record count", RECORD_COUNT_WIDTH, FileError.BAD_RECORD_COUNT
    )
    _trailer(lines)
    if lines.remaining() != record_count:
        raise FileRejected(
            FileError.BAD_RECORD_COUNT,
            f"record count says {record_count}, the file has {lines.remaining()}",
            lines.position,
        )
    declared = tuple(fields)
    width = record_width(declared)
    records = []
    while lines.remaining():
        raw = lines.take("records")
        records.append(_decode_record(raw, declared, width, lines.position))
    if parsed_name is not None:
        header = DataFileName(creator, receiver, date, file_type)
        if parsed_name != header:
            raise FileRejected(
                FileError.NAME_MISMATCH, f"file name {name} disagrees with its header ({header})"
            )
    return DataFile(
        creator=creator,
        receiver=receiver,
        date=date,
        file_type=file_type,
        fields=declared,
        records=tuple(records),
        sender=sender,
        recipient=recipient,
        summary_table=summary_table,
        version=version,
    )


def read_index_file(data: bytes, name: str | None = None) -> IndexFile:
    """Parse an index file; FileRejected (whole file) on the first defect.

    Every entry must be an OFD_ name of the index's creator, receiver and
    date, listed once; the count must match."""
    parsed_name = parse_index_file_name(name) if name is not None else None
    lines = _Lines(data)
    _header_magic(lines, INDEX_MAGIC)
    version = _header_version(lines)
    creator = _header_code(lines, "creator")
    receiver = _header_code(lines, "receiver")
    date = _header_date(lines)
    count = _header_count(lines, "file count", INDEX_COUNT_WIDTH, FileError.BAD_RECORD_COUNT)
    _trailer(lines)
    if lines.remaining() != count:
        raise FileRejected(
            FileError.BAD_RECORD_COUNT,
            f"file count says {count}, the index lists {lines.remaining()}",
            lines.position,
        )
    names: list[str] = []
    while lines.remaining():
        entry = lines.take("file names").decode(ENCODING)
        parts = _parse_entry(entry, lines.position)
        if (parts.creator, parts.receiver, parts.date) != (creator, receiver, date):
            raise FileRejected(
                FileError.NAME_MISMATCH, f"{entry} is not a file of this index", lines.position
            )
        if entry in names:
            raise FileRejected(FileError.DUPLICATE_ENTRY, f"{entry} listed twice", lines.position)
        names.append(entry)
    if parsed_name is not None and parsed_name != (creator, receiver, date):
        raise FileRejected(FileError.NAME_MISMATCH, f"index name {name} disagrees with its header")
    return IndexFile(creator, receiver, date, tuple(names), version)


def _parse_entry(entry: str, number: int) -> DataFileName:
    try:
        return parse_data_file_name(entry)
    except FileRejected as exc:
        raise FileRejected(exc.code, exc.reason, number) from None
