"""The on-disk index of a photo collection: one embedding per image, which file each row is, and
which files could not be read (BUILD.md, "The index format").

  <index>/index.json              the header and the commit point: the format and its version, the
                                  collection's root, the model that embedded it (fingerprint,
                                  workdir, step, image size), D, how many rows are committed, the
                                  generation's two files, the skipped files
  <index>/embeddings-<gen>.npy    float32 [capacity, D], row r the unit embedding of the manifest's
                                  line r; only the first `rows` rows count
  <index>/manifest-<gen>.jsonl    one record per row: {"path", "size", "mtime_ns"}, the path
                                  relative to the root with "/" separators

Why generations: three files cannot be replaced together atomically. A build writes a new
generation's files beside the old ones, which readers keep using; each checkpoint flushes the new
rows to disk and then replaces index.json (written to a temporary name, then os.replace'd), and
index.json alone says which files and how many of their rows count. A build killed at any moment
leaves index.json naming a consistent index: the last checkpoint's. One writer at a time.
"""

from __future__ import annotations

import functools
import json
import os
import re

import numpy as np

from jclip.errors import UserError

FORMAT = "jclip-collection-index"
VERSION = 1
HEADER = "index.json"
_TEMPORARY = HEADER + ".tmp"  # the next index.json, before it replaces the last
_GENERATION_FILE = re.compile(r"^(embeddings|manifest)-(\d+)\.(npy|jsonl)$")
# What "rebuild it" means in each place an index is made.
REBUILD_HINT = "--rebuild_index in eval.py, update_index(..., rebuild=True) in Python"


class CollectionIndex:
  """A committed index, read-only: its embeddings memory-mapped, its manifest read on demand."""

  def __init__(self, path: str, header: dict):
    self.path, self.header = path, header
    self.root: str = header["root"]
    self.rows: int = header["rows"]
    self.embed_dim: int = header["embed_dim"]
    self.fingerprint: str = header["model"]["fingerprint"]
    self.skipped: list[dict] = header["skipped"]
    self.complete: bool = header["complete"]  # False: a build was interrupted

  @classmethod
  def open(cls, path: str | os.PathLike) -> CollectionIndex:
    path = os.fspath(path)
    header_path = os.path.join(path, HEADER)
    if not os.path.exists(header_path):
      raise UserError(
        f"{path} holds no jclip index ({HEADER} is missing): build one with python eval.py "
        f"--workdir=<workdir> --images=<folder> --index={path}."
      )
    with open(header_path) as f:
      header = json.load(f)
    if header.get("format") != FORMAT or header.get("version") != VERSION:
      raise UserError(
        f"{header_path} is not a jclip index of format version {VERSION} (it says "
        f"{header.get('format')!r} version {header.get('version')!r}): rebuild it ({REBUILD_HINT})."
      )
    return cls(path, header)

  @functools.cached_property
  def embeddings_ND(self) -> np.ndarray:
    """The committed rows, memory-mapped: [rows, D] float32, read from disk as they are used."""
    embeddings = np.load(self._file("embeddings_file"), mmap_mode="r")
    if embeddings.shape[0] < self.rows or embeddings.shape[1:] != (self.embed_dim,):
      raise UserError(
        f"{self._file('embeddings_file')} holds {embeddings.shape} embeddings where {HEADER} "
        f"commits [{self.rows}, {self.embed_dim}]: the index is damaged; rebuild it "
        f"({REBUILD_HINT})."
      )
    return embeddings[: self.rows]

  @functools.cached_property
  def _manifest(self) -> tuple[bytes, np.ndarray]:
    """The manifest's bytes and where each line ends: a query reads the records of its k hits
    without splitting 100,000 lines into objects."""
    with open(self._file("manifest_file"), "rb") as f:
      text = f.read()
    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == ord("\n"))[: self.rows]
    if len(ends) < self.rows:
      raise UserError(
        f"{self._file('manifest_file')} has {len(ends)} records where {HEADER} commits "
        f"{self.rows}: the index is damaged; rebuild it ({REBUILD_HINT})."
      )
    return text, ends

  def records(self, rows=None) -> list[dict]:
    """The manifest records {"path", "size", "mtime_ns"} of `rows` (default: all, in row order)."""
    text, ends = self._manifest
    rows = range(self.rows) if rows is None else rows
    return [json.loads(text[ends[r - 1] + 1 if r else 0 : ends[r]]) for r in rows]

  def paths(self, rows) -> list[str]:
    """The absolute paths of the images of `rows`."""
    return [self.absolute(record["path"]) for record in self.records(rows)]

  def absolute(self, relative_path: str) -> str:
    return os.path.join(self.root, *relative_path.split("/"))

  def check_model(self, model) -> None:
    """Refuses a model other than the one that embedded the index: their spaces differ."""
    if model.fingerprint == self.fingerprint:
      return
    made_by = self.header["model"]
    raise UserError(
      f"The index {self.path} was built by another model (fingerprint {self.fingerprint}: step "
      f"{made_by['step']} of {made_by['workdir']}) than this one ({model.fingerprint}: step "
      f"{model.step} of {model.workdir}), and embeddings of two models cannot be compared. Give "
      f"another index path (--index), or rebuild this one ({REBUILD_HINT})."
    )

  def check_root(self, root: str) -> None:
    if os.path.realpath(root) != self.root:
      raise UserError(
        f"The index {self.path} is of the images in {self.root}, not {root}. Give another index "
        f"path (--index), or rebuild this one for {root} ({REBUILD_HINT})."
      )

  def _file(self, key: str) -> str:
    return os.path.join(self.path, self.header[key])


def check_index_folder(path: str) -> None:
  """An index goes into a new or empty folder, or over an index (or the files of one whose first
  commit never came): never among other files (a mistyped --index could be the photo folder)."""
  if not os.path.isdir(path) or os.path.exists(os.path.join(path, HEADER)):
    return
  if any(not _GENERATION_FILE.match(name) and name != _TEMPORARY for name in os.listdir(path)):
    raise UserError(
      f"{path} is a folder with files and no jclip index ({HEADER}): give a new or empty folder "
      "for the index."
    )


class IndexWriter:
  """Writes one new generation of the index in `path`: rows appended in order, each commit()
  making the rows so far (and `skipped`) the index that readers see.

  `header` holds the fields that do not change during a build: root, model, embed_dim.
  `capacity` rows are allocated: every image the build will try (an unreadable one leaves its row
  unused).
  """

  def __init__(self, path: str, header: dict, capacity: int):
    check_index_folder(path)
    os.makedirs(path, exist_ok=True)
    self.path = path
    self.generation = _next_generation(path)
    self.header = {
      "format": FORMAT,
      "version": VERSION,
      **header,
      "generation": self.generation,
      "embeddings_file": f"embeddings-{self.generation:06d}.npy",
      "manifest_file": f"manifest-{self.generation:06d}.jsonl",
    }
    self.rows = 0
    self.skipped: list[dict] = []
    self._embeddings = np.lib.format.open_memmap(
      os.path.join(path, self.header["embeddings_file"]),
      mode="w+",
      dtype=np.float32,
      shape=(capacity, header["embed_dim"]),
    )
    self._manifest = open(os.path.join(path, self.header["manifest_file"]), "w")
    self._committed = False

  def append(self, emb_BD: np.ndarray, records: list[dict]) -> None:
    """Rows for `records` ({"path", "size", "mtime_ns"}), committed by the next commit()."""
    end = self.rows + len(records)
    if len(emb_BD) != len(records) or end > len(self._embeddings):
      raise ValueError(
        f"{len(emb_BD)} rows for {len(records)} records at row {self.rows} of "
        f"{len(self._embeddings)} allocated."
      )
    self._embeddings[self.rows : end] = emb_BD
    self._manifest.writelines(json.dumps(record) + "\n" for record in records)
    self.rows = end

  def commit(self, complete: bool = False) -> None:
    """Flushes the rows to disk, then replaces index.json: a crash before the replace leaves the
    previous commit, one after it this one."""
    self._embeddings.flush()
    self._manifest.flush()
    os.fsync(self._manifest.fileno())
    header = {**self.header, "rows": self.rows, "skipped": self.skipped, "complete": complete}
    _write_header(self.path, header)
    if not self._committed:  # the older generations are no longer named by index.json
      _remove_generations(self.path, keep=self.generation)
      self._committed = True

  def close(self) -> None:
    self._manifest.close()
    del self._embeddings


def _write_header(folder: str, header: dict) -> None:
  temporary = os.path.join(folder, _TEMPORARY)
  with open(temporary, "w") as f:
    json.dump(header, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, os.path.join(folder, HEADER))


def _generations(path: str) -> dict[str, int]:
  """The generation files in `path`: {file name: its generation}."""
  found = (_GENERATION_FILE.match(name) for name in os.listdir(path))
  return {match.group(0): int(match.group(2)) for match in found if match}


def _next_generation(path: str) -> int:
  # Past every file present, committed or left by an interrupted build: a new generation never
  # writes into a file that index.json names.
  return max(_generations(path).values(), default=0) + 1


def _remove_generations(path: str, keep: int) -> None:
  for name, generation in _generations(path).items():
    if generation != keep:
      try:
        os.remove(os.path.join(path, name))
      except OSError:  # still open elsewhere (Windows): the next build removes it
        pass
