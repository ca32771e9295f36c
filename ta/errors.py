"""Errors of the TA domain layer, and whose fault each one is.

::

    TAError                      base of everything raised on purpose here
    ├── FileRejected             an input file is malformed: the SENDER's fault.
    │                            The whole file is refused; ``code`` is a stable
    │                            ``FileError`` (see below), ``reason`` a short
    │                            text, ``line`` the 1-based line (0: whole file).
    └── InvalidInput(ValueError) a caller handed this layer something it must
                                 not (a negative amount, a float, a value too wide
                                 for its field): the CALLER's fault, i.e. a bug in
                                 the service above, never an investor's error.

Investor-level failures (insufficient shares, unknown account, ...) are not
exceptions: they are ``ta.codes.ReturnCode`` values written into failure
confirmations, because an order must always be answered, never dropped.

``FileError`` codes are stable: a number is never reused or renumbered; new
codes are appended. They are meant to be logged and shown to the distributor.

====  ====================  ================================================
code  name                  meaning
====  ====================  ================================================
F001  BAD_ENCODING          bytes are not valid GB18030 (or a multi-byte
                            character is split by a field boundary)
F002  BAD_LINE_END          a line does not end with CRLF (bare CR or LF)
F003  BAD_HEADER            a header line is missing, has the wrong width,
                            wrong magic, version other than 21, unknown type
F004  BAD_DATE              a date (YYYYMMDD) or time (HHMMSS) is not real
F005  UNKNOWN_FIELD         a declared field is not in the field dictionary
F006  DUPLICATE_FIELD       a field is declared twice
F007  BAD_FIELD_COUNT       field count is not 3 digits or is out of range
F008  BAD_RECORD_COUNT      record count is not 8 digits, or the number of
                            records (or index entries) differs from it
F009  BAD_RECORD_LENGTH     a record's byte length differs from the sum of
                            the declared field widths
F010  BAD_NUMBER            an N field holds something other than digits
F011  BAD_TRAILER           OFDCFEND missing, or anything after it
F012  NAME_MISMATCH         the file name disagrees with the header (creator,
                            receiver, date, type), or an index entry names a
                            file of another creator/receiver/date
F013  BAD_FILE_NAME         the file name is not OFD_/OFI_ profile form
F014  DUPLICATE_ENTRY       an index lists the same file twice
F015  BAD_TEXT              a text field holds a control character
F016  ORDER_KEY_REUSED      an order key (distributor, AppSheetSerialNo)
                            already imported, or earlier in the same file,
                            comes again with different content
F017  MISSING_ORDER_KEY     an application file without AppSheetSerialNo,
                            or a record whose AppSheetSerialNo is blank
====  ====================  ================================================
"""

from __future__ import annotations

import enum


class FileError(enum.Enum):
    """Stable reasons for refusing a whole input file (values never reused)."""

    BAD_ENCODING = "F001"
    BAD_LINE_END = "F002"
    BAD_HEADER = "F003"
    BAD_DATE = "F004"
    UNKNOWN_FIELD = "F005"
    DUPLICATE_FIELD = "F006"
    BAD_FIELD_COUNT = "F007"
    BAD_RECORD_COUNT = "F008"
    BAD_RECORD_LENGTH = "F009"
    BAD_NUMBER = "F010"
    BAD_TRAILER = "F011"
    NAME_MISMATCH = "F012"
    BAD_FILE_NAME = "F013"
    DUPLICATE_ENTRY = "F014"
    BAD_TEXT = "F015"
    ORDER_KEY_REUSED = "F016"
    MISSING_ORDER_KEY = "F017"


class TAError(Exception):
    """Base of every error this package raises on purpose."""


class FileRejected(TAError):
    """A whole input file is refused; nothing of it may be imported."""

    def __init__(self, code: FileError, reason: str, line: int = 0) -> None:
        self.code = code
        self.reason = reason
        self.line = line
        where = f" at line {line}" if line else ""
        super().__init__(f"{code.value} {code.name}{where}: {reason}")


class InvalidInput(TAError, ValueError):
    """The caller passed a value this layer refuses (a bug above us)."""
