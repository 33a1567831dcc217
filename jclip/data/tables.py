"""Tables of text with a header row (CSV or TSV), read with every problem named by file and row:

  .csv   comma-separated, quoted as spreadsheets write it: "a, b" is one field, "" a quote in one
  .tsv   tab-separated and unquoted: a quote is an ordinary character (Flickr's captions hold some)

    table = read_table(path, {"image": "--image_column"})    # the columns it must have
    for row, fields in table.rows: fields["image"]

A UTF-8 byte-order mark (what spreadsheets put first in a UTF-8 CSV) is ignored; blank lines are
skipped, and row numbers count every line of the file, the header's being 1.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Mapping

from jclip.errors import UserError

# By file extension: (delimiter, quoting) of the csv module.
FORMATS = {".csv": (",", csv.QUOTE_MINIMAL), ".tsv": ("\t", csv.QUOTE_NONE)}
SEPARATED_BY = {",": "comma", "\t": "tab"}


class DataError(UserError):
  """A data file has a problem; the message names the file, the row and the fix."""


@dataclasses.dataclass
class Table:
  path: str
  header: list[str]
  rows: list[tuple[int, dict[str, str]]]  # (row number in the file, {column: field})


def _decoded(path: str, data: bytes) -> str:
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    text = e.object  # the bytes after any byte-order mark
    row = text.count(b"\n", 0, e.start) + 1
    column = e.start - (text.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(
      f"{path} row {row}: byte {text[e.start : e.start + 1]!r} at column {column} is not "
      "UTF-8. Re-save the file as UTF-8."
    ) from None


def read_table(path: str, required: Mapping[str, str]) -> Table:
  """The header and the rows of a .csv or .tsv file (see the module docstring).

  Args:
    required: the columns that the header must hold, each with the setting that names it
      ({"caption": "--config.data.caption_column"}), which the message of a missing one names.

  Raises a DataError for a file that is missing, empty or not UTF-8, a header without a required
  column, or a row without the header's number of fields.
  """
  extension = os.path.splitext(path)[1].lower()
  if extension not in FORMATS:
    raise DataError(
      f"{path} is not a .csv or .tsv file: name a table of comma-separated (.csv) or "
      "tab-separated (.tsv) values with a header row."
    )
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist.")
  delimiter, quoting = FORMATS[extension]
  with open(path, "rb") as f:
    text = _decoded(path, f.read())
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
  header = [name.strip() for name in next(reader, [])]
  if not header:
    raise DataError(f"{path} is empty: it needs a header row naming its columns, then the rows.")
  repeated = sorted({name for name in header if header.count(name) > 1})
  if repeated:
    raise DataError(f"{path} row 1: the header names column(s) {repeated} more than once.")
  missing = [name for name in required if name not in header]
  if missing:
    settings = ", ".join(f"{required[name]}={name!r}" for name in missing)
    raise DataError(
      f"{path} row 1: the header {header} has no column(s) {missing} ({settings}): rename the "
      "column, or set that option to the name your file uses."
    )
  rows = []
  for fields in reader:
    if not fields:
      continue  # a blank line
    if len(fields) != len(header):
      raise DataError(
        f"{path} row {reader.line_num}: {len(fields)} {SEPARATED_BY[delimiter]}-separated "
        f"fields, the header has {len(header)}. Check for a stray "
        f"{SEPARATED_BY[delimiter]} or a missing field."
      )
    rows.append((reader.line_num, dict(zip(header, fields, strict=True))))
  return Table(path, header, rows)
