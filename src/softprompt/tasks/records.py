"""Rows of data files, each knowing where it came from, so every complaint names file, line and field.

One reader per file format (JSONL, TSV, CSV, whole-file JSON), shared by every task.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Record:
    """One row (or one object nested in a row) and its location, for one-line error messages.

    `where` names the file and line ("dev.tsv, line 5"); `prefix` is the path of this object
    inside the row ("passage.questions[2].") so nested fields are named in full.
    """

    fields: Mapping[str, Any]
    where: str
    prefix: str = ""

    def error(self, name: str, problem: str) -> SoftpromptError:
        """The error for a bad field of this record."""
        return SoftpromptError(f"{self.where}: field '{self.prefix}{name}' {problem}")

    def find(self, name: str) -> Any:
        """The value of field `name`, or of a dotted path into nested JSON objects ("review.text"); None where absent.

        A field whose own name holds the dot (a CSV column "review.text") comes first.
        """
        if name in self.fields or "." not in name:
            return self.fields.get(name)
        value: Any = self.fields
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    def has(self, name: str) -> bool:
        return self.find(name) is not None

    def value(self, name: str) -> Any:
        """The value of a field or dotted path (see `find`); raises SoftpromptError when it is missing."""
        value = self.find(name)
        if value is None:
            raise self.error(name, "is missing")
        return value

    def scalar(self, name: str) -> Any:
        """A text, number or boolean (see `value`); raises SoftpromptError on a JSON object or array, which is no one text."""
        value = self.value(name)
        if isinstance(value, Mapping):
            example = f"{name}.{next(iter(value))}" if value else f"{name}.FIELD"
            raise self.error(name, f"holds a JSON object, not text; name one of its fields with a dotted path, e.g. '{{{example}}}'")
        if isinstance(value, list):
            raise self.error(name, "holds a JSON array, not text; name a text field, or a field inside an object with a "
                                   "dotted path such as '{review.text}'")
        return value

    def text(self, name: str, allow_empty: bool = False) -> str:
        """A text field; raises SoftpromptError when missing, not text, or empty."""
        value = self.value(name)
        if not isinstance(value, str):
            raise self.error(name, f"must be text, found {type(value).__name__} {value!r}")
        if not allow_empty and not value.strip():
            raise self.error(name, "is empty")
        return value

    def integer(self, name: str) -> int:
        value = self.value(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, found {value!r}")
        return value

    def texts(self, name: str) -> tuple[str, ...]:
        """A list of non-empty strings."""
        values = self.value(name)
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise self.error(name, f"must be a list of non-empty strings, found {values!r}")
        return tuple(values)

    def child(self, name: str) -> Record:
        """A nested JSON object, as a record that names its fields by their full path."""
        value = self.value(name)
        if not isinstance(value, dict):
            raise self.error(name, f"must be an object, found {type(value).__name__}")
        return Record(value, self.where, f"{self.prefix}{name}.")

    def children(self, name: str) -> list[Record]:
        """A nested list of JSON objects, each as a record named by its index."""
        values = self.value(name)
        if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
            raise self.error(name, "must be a list of objects")
        return [Record(v, self.where, f"{self.prefix}{name}[{i}].") for i, v in enumerate(values)]

    def label_index(self, labels: tuple[str, ...]) -> int | None:
        """The class index of field 'label' (int, bool, digit string or label name); None if unlabelled.

        Official files and the hub write labels differently (1, true, "1", "entailment");
        -1 is the hub's "no label" for test splits.
        """
        value = self.fields.get("label")
        if value is None or value == -1:
            return None
        if isinstance(value, bool):
            index = int(value)
        elif isinstance(value, int):
            index = value
        elif isinstance(value, str) and value in labels:
            index = labels.index(value)
        elif isinstance(value, str) and value.strip().isdigit():
            index = int(value)
        else:
            index = -1
        if not 0 <= index < len(labels):
            raise self.error("label", f"has value {value!r}, expected one of {', '.join(labels)}")
        return index

    def render(self, template: str, allow_empty: tuple[str, ...] = ()) -> str:
        """Fill a str.format template with this record's (stripped) text fields; "{review.text}" reads a nested one.

        Every field the template names must be present, non-empty and no JSON object or array
        (`scalar`), except that those in `allow_empty` may be empty (official data has a few
        empty answer options, for instance).
        """
        values = {}
        for name in template_fields(template):
            value = self.scalar(name)
            if not isinstance(value, str):
                value = str(value)
            if not value.strip() and name not in allow_empty:
                raise self.error(name, "is empty")
            values[name] = value.strip()
        return fill(template, values)


def template_fields(template: str) -> list[str]:
    """The field names a str.format template uses; raises SoftpromptError on a malformed one."""
    try:
        names = [name for _, name, _, _ in _FORMATTER.parse(template) if name is not None]
    except ValueError as e:
        raise SoftpromptError(f"input template {template!r} is malformed: {e}") from None
    if not names:
        raise SoftpromptError(f"input template {template!r} names no field; write e.g. 'review: {{text}}'")
    for name in names:
        if "[" in name or any(not part or part.isdigit() for part in name.split(".")):
            raise SoftpromptError(f"input template {template!r}: '{{{name}}}' must be a field name, "
                                  "or a dotted path into a JSON object such as '{review.text}'")
    return names


def fill(template: str, values: Mapping[str, str]) -> str:
    """str.format of `template` with each field looked up by its whole name, so "{review.text}" is one key of `values`."""
    parts = []
    for literal, name, spec, conversion in _FORMATTER.parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(format(_FORMATTER.convert_field(values[name], conversion), spec or ""))
    return "".join(parts)


def read_text(path: Path) -> str:
    """A file's UTF-8 text (gzip-compressed if it ends in .gz); raises SoftpromptError naming the bad line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SoftpromptError(f"{path}: file not found") from None
    except OSError as e:
        raise SoftpromptError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise SoftpromptError(f"{path}: not a valid gzip file ({e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SoftpromptError(f"{path}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None


def read_jsonl(path: Path) -> Iterator[Record]:
    """One record per non-blank line; each line must be a JSON object."""
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise SoftpromptError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(value, dict):
            raise SoftpromptError(f"{where}: expected a JSON object, found {type(value).__name__}")
        yield Record(value, where)


def read_json(path: Path) -> Record:
    """A whole-file JSON object (SQuAD's layout)."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"{path}, line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise SoftpromptError(f"{path}, line 1: expected a JSON object, found {type(value).__name__}")
    return Record(value, str(path))


def read_tsv(path: Path, rename: Mapping[str, str] | None = None) -> Iterator[Record]:
    """Tab-separated rows under a header, with no quoting: GLUE's files hold bare quote characters."""
    return _read_table(path, delimiter="\t", quoting=csv.QUOTE_NONE, rename=rename or {})


def read_csv(path: Path, rename: Mapping[str, str] | None = None) -> Iterator[Record]:
    """Comma-separated rows under a header, with standard CSV quoting."""
    return _read_table(path, delimiter=",", quoting=csv.QUOTE_MINIMAL, rename=rename or {})


def _read_table(path: Path, delimiter: str, quoting: int, rename: Mapping[str, str]) -> Iterator[Record]:
    """Rows as records keyed by the (renamed) header; every row must have the header's width."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if not header:
            raise SoftpromptError(f"{path}, line 1: file is empty; expected a header row")
        columns = [rename.get(name.strip(), name.strip()) for name in header]
        first_line = reader.line_num + 1
        for row in reader:
            where = f"{path}, line {first_line}"
            first_line = reader.line_num + 1
            if not row:
                continue
            if len(row) != len(columns):
                expected = f"{len(columns)} fields ({', '.join(columns)})"
                raise SoftpromptError(f"{where}: expected {expected}, found {len(row)}")
            yield Record(dict(zip(columns, row, strict=True)), where)
    except csv.Error as e:
        raise SoftpromptError(f"{path}, line {reader.line_num}: malformed row ({e})") from None
