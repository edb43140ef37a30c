"""Input formats: sentence ids and metadata (``--input-format``, ``--columns``, ``--on-bad-row``).

* ``text``: one sentence per line; a sentence's id is its 1-based line number.
* ``tsv``: ``ID<TAB>TEXT`` (the BUCC layout), or the columns ``--columns`` names (``id,text,url``):
  ``text`` is required, ``id`` optional (without it the id is the line number); the other named
  columns, and unnamed ones past them (``col3``, ``col4``, ... by 1-based position), are kept as
  metadata.
* ``jsonl``: one JSON object per line with a string ``text``, an optional ``id`` (string or integer)
  and any other fields, kept as metadata.
* ``auto`` (the default): ``jsonl`` for ``.jsonl`` / ``.ndjson`` names (also ``.gz``, ``.xz``), else
  ``text``.

A bad row -- too few columns, an empty id, invalid JSON, no ``text`` string, an id seen on an
earlier line -- is skipped and counted (``bad_rows``) under ``--on-bad-row skip`` (the default), or
stops the ingest with the file's name, the line number and what is wrong under ``fail``. Ids are
stored as strings, once per sentence; a text that occurs on several lines is one sentence that
keeps every id (and its metadata) it occurs with (:mod:`miner.pipeline.corpora`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator

from miner.io import reader
from miner.runtime.errors import InputFileError, UsageError

INPUT_FORMATS = ("auto", "text", "tsv", "jsonl")
BAD_ROW_POLICIES = ("skip", "fail")
DEFAULT_COLUMNS = ("id", "text")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def resolve_format(fmt: str, path) -> str:
    """``text``, ``tsv`` or ``jsonl`` for ``path``; ``auto`` looks at the name only."""
    fmt = (fmt or "auto").lower()
    if fmt not in INPUT_FORMATS:
        raise UsageError(f"unknown input format {fmt!r}; use one of {', '.join(INPUT_FORMATS)}")
    if fmt != "auto":
        return fmt
    name = os.fsdecode(path).lower()
    for suffix in (".gz", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return "jsonl" if name.endswith(_JSONL_SUFFIXES) else "text"


def parse_columns(spec: str | list | tuple | None) -> list[str]:
    """The TSV column names of ``--columns`` (``id,text,url``); ``text`` must be one of them."""
    if spec is None or spec == "":
        return list(DEFAULT_COLUMNS)
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else [str(n).strip() for n in spec]
    bad = [n for n in names if not _COLUMN_NAME.fullmatch(n)]
    if bad:
        raise UsageError(f"--columns: {bad[0]!r} is not a column name (letters, digits, _ . -; e.g. id,text,url)")
    if len(set(names)) != len(names):
        raise UsageError(f"--columns names a column twice: {','.join(names)}")
    if "text" not in names:
        raise UsageError(f"--columns must name the text column 'text' (e.g. id,text,url), got {','.join(names)}")
    return names


def _clean(value: str) -> str:
    """Whitespace and control characters collapsed to one space, ends stripped (TSV-safe)."""
    return reader.normalise(value, strip_bom=False)


class BadRow(Exception):
    """A row that cannot be read (the message says why)."""


class RowParser:
    """Turns one decoded line into ``(text, id, metadata)`` for :func:`miner.io.reader.read_records`.

    Returns None for a bad row under policy ``skip`` (counted in ``stats.bad_rows``); raises
    :class:`InputFileError` under ``fail``. ``text`` is returned raw (the reader normalises it);
    ``id`` is None when the row has none (its line number is its id)."""

    def __init__(self, fmt: str, path, *, columns=None, policy: str = "skip", stats=None) -> None:
        if fmt not in ("tsv", "jsonl"):
            raise UsageError(f"no row parser for input format {fmt!r}")
        if policy not in BAD_ROW_POLICIES:
            raise UsageError(f"unknown bad-row policy {policy!r}; use one of {', '.join(BAD_ROW_POLICIES)}")
        self.fmt, self.path, self.policy, self.stats = fmt, path, policy, stats
        self.columns = parse_columns(columns)
        self._text_col = self.columns.index("text")
        self._id_col = self.columns.index("id") if "id" in self.columns else None
        self._needed = 1 + max(self._text_col, self._id_col if self._id_col is not None else -1)
        self._seen: dict[bytes, int] = {}  # id digest -> 0-based line of its first row

    def __call__(self, raw: str, line_no: int) -> tuple[str, str | None, dict | None] | None:
        try:
            text, ext_id, meta = self._tsv(raw) if self.fmt == "tsv" else self._jsonl(raw)
            if ext_id is not None:
                key = hashlib.blake2b(ext_id.encode("utf-8"), digest_size=16).digest()
                first = self._seen.setdefault(key, line_no)
                if first != line_no:
                    raise BadRow(f"id {ext_id!r} was already used on line {first + 1}")
        except BadRow as exc:
            if self.policy == "fail":
                raise InputFileError(
                    f"{os.fsdecode(self.path)}: line {line_no + 1}: {exc} (input format {self.fmt}"
                    + (f", columns {','.join(self.columns)}" if self.fmt == "tsv" else "")
                    + ") -- fix the file, or rerun with --on-bad-row skip to skip and count such rows"
                ) from None
            if self.stats is not None:
                self.stats.bad_rows += 1
            return None
        return text, ext_id, meta

    def _tsv(self, raw: str):
        fields = raw.rstrip("\r\n").split("\t")
        if len(fields) < self._needed:
            raise BadRow(f"has {len(fields)} tab-separated column(s), expected at least {self._needed}")
        ext_id = None
        if self._id_col is not None:
            ext_id = _clean(fields[self._id_col])
            if not ext_id:
                raise BadRow("has an empty id")
        meta = {}
        for i, value in enumerate(fields):
            if i in (self._text_col, self._id_col):
                continue
            name = self.columns[i] if i < len(self.columns) else f"col{i + 1}"
            meta[name] = _clean(value)
        return fields[self._text_col], ext_id, meta or None

    def _jsonl(self, raw: str):
        try:
            obj = json.loads(raw, parse_constant=_no_constant)
        except ValueError as exc:
            raise BadRow(f"is not valid JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(obj, dict):
            raise BadRow(f"is a JSON {type(obj).__name__}, not an object with a \"text\" field")
        text = obj.get("text")
        if not isinstance(text, str):
            raise BadRow("has no \"text\" string" if text is None else f"has a \"text\" that is a {type(text).__name__}, not a string")
        ext_id = None
        if "id" in obj:
            value = obj["id"]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise BadRow(f"has an \"id\" that is not a string or an integer: {json.dumps(value)[:40]}")
            ext_id = _clean(str(value))
            if not ext_id:
                raise BadRow("has an empty id")
        meta = {k: v for k, v in obj.items() if k not in ("text", "id")}
        return text, ext_id, meta or None


_ID_FIELD = re.compile(r"[^\s]{1,64}")


def looks_like_id_tsv(path, lines: int = 20) -> bool:
    """Whether the first (up to ``lines``, at least 3) non-blank lines of ``path`` all look like
    ``ID<TAB>TEXT``: one tab, a first field of one word with a digit in it. Unreadable: False."""
    try:
        with reader.open_text_stream(path) as fh:
            seen = 0
            for raw in fh:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if (len(fields) != 2 or not _ID_FIELD.fullmatch(fields[0].lstrip("\ufeff"))
                        or not any(c.isdigit() for c in fields[0]) or not fields[1].strip()):
                    return False
                seen += 1
                if seen >= lines:
                    break
    except Exception:  # unreadable or corrupt: the ingest reports it
        return False
    return seen >= 3


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def display_id(ext_id: str | None, line_no: int) -> str:
    """A sentence occurrence's id: its input id, else its 1-based line number."""
    return ext_id if ext_id is not None else str(line_no + 1)


def read_records(
    path: str,
    *,
    parse: Callable[[str, int], tuple | None] | None = None,
    max_chars: int = 2000,
    on_decode_error: str = "skip",
    stats: "reader.ReadStats | None" = None,
) -> Iterator[tuple[int, str, str | None, dict | None, int | None]]:
    """:func:`read_sentences` for files with ids and metadata, duplicates included.

    ``parse(raw_line, line_no)`` (a :class:`miner.io.records.RowParser`; None for plain text) returns
    ``(text, id, metadata)`` or None for a skipped bad row. Yields ``(line_no, text, id, metadata,
    dup_of)`` for every kept line: ``dup_of`` is None for a new sentence, else the 0-based index
    (among the yielded new sentences) of the earlier sentence with the same text; such a line is
    still counted in ``stats.duplicates``. With ``parse``, a line longer than the read chunk
    (``4 * max_chars`` bytes, at least 64 KiB) counts as too long without being parsed."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise UsageError(f"max_chars must be an integer of at least 1, got {max_chars!r}")
    policy = reader.coerce_policy(on_decode_error)
    if stats is None:
        stats = reader.ReadStats()
    return reader.read_record_stream(path, max_chars, policy, stats, parse, True)
