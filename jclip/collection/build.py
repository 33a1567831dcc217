"""Bringing an index up to date with its folder: only new or changed files are embedded.

    summary = update_index(model, "~/Photos", index_path)   # model: jclip.load(workdir)
    print(summary.line())   # Indexed 1,234 images of ... (12 new, 3 changed, 2 removed) in 4.2 s

A file is unchanged while its size and modification time (ns) are those of its manifest record; its
row is kept. Rows of files that are gone are dropped. A file that cannot be decoded (corrupt,
truncated, a decompression bomb) is skipped and listed with its size and time, and retried only
once it changes; a second path to a file already listed (a symbolic or hard link) is skipped too,
so that one file is one row. The new rows are committed every `checkpoint_every` images: an
interrupted build keeps what it embedded, and a rerun embeds only the rest.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import time

from tqdm import tqdm

from jclip.collection.index import HEADER, CollectionIndex, IndexWriter, check_index_folder
from jclip.data.images import ImageFileError, list_image_files

# Images per commit: at 40-1,000 images/s, seconds of work lost at most to an interruption.
CHECKPOINT_EVERY = 512
# Copying the kept rows into a new generation: rows per read of the old one.
COPY_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class FileState:
  size: int
  mtime_ns: int


@dataclasses.dataclass
class UpdateSummary:
  """What an update did, for one line of output; the skipped files are index.skipped."""

  index: CollectionIndex
  new: int
  changed: int
  removed: int
  seconds: float

  def line(self) -> str:
    """'Indexed 1,234 images of <root> (12 new, 3 changed, 2 removed; 1 unreadable skipped:
    listed in <index>/index.json) in 4.2 s'."""
    changes = f"{self.new:,} new, {self.changed:,} changed, {self.removed:,} removed"
    links = sum("same_as" in record for record in self.index.skipped)
    kinds = [
      f"{count:,} {what}"
      for count, what in (
        (len(self.index.skipped) - links, "unreadable"),
        (links, "second paths to a file"),
      )
      if count
    ]
    if kinds:
      listed_in = os.path.join(self.index.path, HEADER)
      changes += f"; {', '.join(kinds)} skipped: listed in {listed_in}"
    return (
      f"Indexed {self.index.rows:,} images of {self.index.root} ({changes}) in {self.seconds:.1f} s"
    )


def update_index(
  model,
  folder: str | os.PathLike,
  index_path: str | os.PathLike,
  *,
  rebuild: bool = False,
  batch_size: int = 64,
  checkpoint_every: int = CHECKPOINT_EVERY,
) -> UpdateSummary:
  """Makes the index at `index_path` hold `model`'s embedding of every image under `folder`.

  `model` is a jclip.Model (or anything with its fingerprint, workdir, step, image_size, embed_dim,
  preprocess and encode_images). An index of another folder or another model is refused unless
  `rebuild`, which starts afresh. Raises a UserError for a folder that is missing or holds no image.
  """
  start = time.perf_counter()
  root = os.path.realpath(os.fspath(folder))
  index_path = os.fspath(index_path)
  files, skipped = _scan(root)
  old = existing_index(index_path, root, rebuild)
  if old is not None:
    old.check_model(model)
  plan = _Plan.make(files, skipped, old)
  index = old
  if not plan.leaves_unchanged(old):
    _write(model, index_path, root, plan, old, batch_size, checkpoint_every)
    index = CollectionIndex.open(index_path)
  return plan.summary(index, time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What an update does, from the folder's files and the old index's records."""

  files: dict[str, FileState]  # every image file (one path per file), by relative path
  old_records: list[dict]  # the old index's manifest, in row order
  kept_rows: list[int]  # rows of the old index whose file is unchanged
  skipped: list[dict]  # links and stat failures of the scan, unchanged unreadable files
  to_embed: list[str]  # new and changed files, and unreadable ones that changed
  known: set[str]  # the paths the old index knew, as rows or as skipped files

  @classmethod
  def make(cls, files, scan_skipped, old: CollectionIndex | None) -> _Plan:
    old_records, old_skipped = (old.records(), old.skipped) if old else ([], [])
    kept_rows = [r for r, rec in enumerate(old_records) if files.get(rec["path"]) == _state(rec)]
    # An unreadable file is tried again only once it changes.
    skipped = scan_skipped + [s for s in old_skipped if files.get(s["path"]) == _state(s)]
    settled = {old_records[r]["path"] for r in kept_rows}.union(s["path"] for s in skipped)
    known = {r["path"] for r in old_records}.union(s["path"] for s in old_skipped)
    return cls(files, old_records, kept_rows, skipped, sorted(files.keys() - settled), known)

  def leaves_unchanged(self, old: CollectionIndex | None) -> bool:
    return (
      old is not None
      and old.complete
      and not self.to_embed
      and len(self.kept_rows) == len(self.old_records)
      and self.skipped == old.skipped
    )

  def summary(self, index: CollectionIndex, seconds: float) -> UpdateSummary:
    embedded = set(self.to_embed).difference(record["path"] for record in index.skipped)
    return UpdateSummary(
      index,
      new=len(embedded - self.known),
      changed=len(embedded & self.known),
      removed=len({record["path"] for record in self.old_records} - self.files.keys()),
      seconds=seconds,
    )


def _write(model, index_path, root, plan: _Plan, old, batch_size, checkpoint_every) -> None:
  """A new generation: the kept rows copied, committed, then the files to embed appended."""
  model_fields = {
    "fingerprint": model.fingerprint,
    "workdir": model.workdir,
    "step": model.step,
    "image_size": model.image_size,
  }
  writer = IndexWriter(
    index_path,
    {"root": root, "model": model_fields, "embed_dim": model.embed_dim},
    capacity=len(plan.kept_rows) + len(plan.to_embed),
  )
  try:
    for begin in range(0, len(plan.kept_rows), COPY_ROWS):
      rows = plan.kept_rows[begin : begin + COPY_ROWS]
      writer.append(old.embeddings_ND[rows], [plan.old_records[r] for r in rows])
    writer.skipped = list(plan.skipped)
    writer.commit(complete=not plan.to_embed)
    if plan.to_embed:
      _embed(model, root, plan.to_embed, plan.files, writer, batch_size, checkpoint_every)
  finally:
    writer.close()


def existing_index(index_path: str, root: str, rebuild: bool) -> CollectionIndex | None:
  """The index to update at index_path (None: a new one, or `rebuild`), checked for everything
  but its model: that it is one, and of `root`. Cheap: eval.py calls it before loading a model."""
  check_index_folder(index_path)
  if rebuild or not os.path.exists(os.path.join(index_path, HEADER)):
    return None
  index = CollectionIndex.open(index_path)
  index.check_root(root)
  return index


def _state(record: dict) -> FileState:
  return FileState(record["size"], record["mtime_ns"])


def _scan(root: str) -> tuple[dict[str, FileState], list[dict]]:
  """({relative path: its state} of every image file under root, [skipped records]): a file
  that cannot be stat'ed (a broken link) and a second path to one file are skipped."""
  files, skipped, first_path = {}, [], {}
  for name in list_image_files(root):
    path = pathlib.PurePath(name).as_posix()
    try:
      stat = os.stat(os.path.join(root, name))
    except OSError as e:
      skipped.append({"path": path, "size": -1, "mtime_ns": -1, "reason": str(e)})
      continue
    state = FileState(stat.st_size, stat.st_mtime_ns)
    same = first_path.setdefault((stat.st_dev, stat.st_ino), path) if stat.st_ino else path
    if same != path:
      record = {"path": path, **dataclasses.asdict(state), "same_as": same}
      skipped.append({**record, "reason": f"{path} is the same file as {same} (a link)"})
    else:
      files[path] = state
  return files, skipped


def _embed(model, root, paths, files, writer, batch_size, checkpoint_every) -> None:
  """Embeds `paths` in batches into `writer`, committing every `checkpoint_every` images; a file
  that cannot be decoded joins writer.skipped."""

  def decode(path):
    try:
      return model.preprocess(os.path.join(root, *path.split("/"))), None
    except (ImageFileError, OSError) as e:  # OSError: gone since the scan, or unreadable
      return None, str(e)

  since_commit = 0
  # Pillow decodes outside the GIL: threads decode a batch's files in parallel.
  with (
    concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool,
    tqdm(total=len(paths), desc="indexing", unit="image", leave=False, disable=None) as bar,
  ):
    for begin in range(0, len(paths), batch_size):
      batch = paths[begin : begin + batch_size]
      images, records = [], []
      for path, (image, error) in zip(batch, pool.map(decode, batch), strict=True):
        record = {"path": path, **dataclasses.asdict(files[path])}
        if error is None:
          images.append(image)
          records.append(record)
        else:
          writer.skipped.append({**record, "reason": error})
      if images:
        writer.append(model.encode_images(images, batch_size=batch_size), records)
      bar.update(len(batch))
      since_commit += len(batch)
      done = begin + len(batch) == len(paths)
      if since_commit >= checkpoint_every or done:
        writer.commit(complete=done)
        since_commit = 0
