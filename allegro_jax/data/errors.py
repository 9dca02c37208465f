"""Exceptions for bad data: the message names the file (and the frame, atom) and what to do.

Both are :class:`ValueError` subclasses, so code catching ``ValueError`` keeps working;
the command-line interface prints them as one paragraph without a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data file or structure cannot be used (the message says where and what to do)."""


class DataFileError(DataError):
    """A data file cannot be read at all: empty, truncated, not its format, not text."""
