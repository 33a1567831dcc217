"""What eval.py --images does: index a folder of images (only new or changed files embedded), then
search it by text or by image, list its near-duplicate pairs and its most off-topic images.

    run_collection(CollectionRequest(workdir=..., images="~/Photos", query_text="a dog", ...))

Every input that can be checked without the model is checked before it is loaded: the flags, the
folder (missing, or without images), the query image (missing or undecodable), the index (another
folder's, or not an index). Results are printed with their paths and scores, and saved in the
output folder (default <workdir>/eval/) as JSON, a PNG grid and an HTML page each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from jclip.api import load
from jclip.collection.build import existing_index, update_index
from jclip.collection.clean import least_similar_rows, mean_direction, near_duplicate_pairs
from jclip.collection.index import CollectionIndex
from jclip.collection.pages import write_image_page
from jclip.collection.search import top_k_rows
from jclip.data.images import list_image_files, open_image, resize_and_center_crop
from jclip.errors import UserError
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.query import save_image_grid
from jclip.slug import slug

# Side of the images in a PNG grid, in pixels.
THUMBNAIL_PX = 160
# Printed lines of a list (skipped files, duplicate pairs); the saved files hold all of it.
PRINTED = 20


@dataclasses.dataclass(frozen=True)
class CollectionRequest:
  """One eval.py --images invocation; each field is the flag of the same name."""

  workdir: str
  images: str
  step: str | None = None
  index: str | None = None  # default: default_index_path(workdir, images)
  query_text: str | None = None
  query_image: str | None = None
  top_k: int = 5
  duplicates: float | None = None  # a cosine similarity threshold
  off_topic: str | None = None  # a description
  outliers: bool = False
  rebuild_index: bool = False
  out_dir: str | None = None  # default: <workdir>/eval
  batch_size: int = 256

  def __post_init__(self):
    if self.top_k < 1 or self.batch_size < 1:
      raise UserError(
        f"--top_k={self.top_k} and --batch_size={self.batch_size} must be at least 1."
      )
    for flag in ("query_text", "off_topic"):
      text = getattr(self, flag)
      if text is not None and not text.strip():
        raise UserError(f"--{flag} is empty: give a sentence that describes images.")
    if self.duplicates is not None and not 0 < self.duplicates <= 1:
      raise UserError(
        f"--duplicates={self.duplicates}: give a cosine similarity in (0, 1], e.g. 0.95 for "
        "re-saved and resized copies."
      )


def default_index_path(workdir: str, images: str) -> str:
  """<workdir>/index/<folder name>_<digest of its real path>: one index per folder and model."""
  root = os.path.realpath(images)
  digest = hashlib.sha256(root.encode()).hexdigest()[:8]
  return os.path.join(
    workdir, "index", f"{slug(os.path.basename(root), default='images')}_{digest}"
  )


def run_collection(request: CollectionRequest) -> None:
  # Paths as a shell would give them: the flags' "~/Photos" is not expanded by the shell.
  request = dataclasses.replace(
    request,
    **{
      field: os.path.expanduser(getattr(request, field))
      for field in ("images", "index", "query_image", "out_dir")
      if getattr(request, field) is not None
    },
  )
  root = os.path.realpath(request.images)
  index_path = request.index or default_index_path(request.workdir, root)
  # Checked before the model is loaded: the folder, the query image, the index.
  list_image_files(root)
  query_image = None if request.query_image is None else open_image(request.query_image)
  existing_index(index_path, root, request.rebuild_index)

  model = load(request.workdir, request.step)
  print(f"Loaded step {model.step} of {request.workdir}.")
  summary = update_index(
    model, root, index_path, rebuild=request.rebuild_index, batch_size=request.batch_size
  )
  print(summary.line())
  index = summary.index
  for record in index.skipped[:PRINTED]:
    print(f"  skipped: {record['reason']}")
  if len(index.skipped) > PRINTED:
    print(f"  ... and {len(index.skipped) - PRINTED} more, listed in {index.path}/index.json")
  outputs = EvalOutputs(request.out_dir or os.path.join(request.workdir, "eval"))
  _answer(request, model, index, query_image, outputs)
  if outputs.written:
    print(outputs.summary())


def _answer(request: CollectionRequest, model, index: CollectionIndex, query_image, outputs):
  """Prints and saves the answer to each of the request's questions."""
  k = request.top_k
  if request.query_text is not None:
    rows, scores = top_k_rows(index.embeddings_ND, model.encode_texts(request.query_text)[0], k)
    title = (
      f"Top {len(rows)} of the {index.rows:,} images in {index.root} for {request.query_text!r}"
    )
    name = f"collection_text_{slug(request.query_text, default='query')}"
    _report_ranking(index, outputs, name, title, rows, scores, {"text": request.query_text})
  if query_image is not None:
    rows, scores = _similar_images(index, model.encode_images(query_image)[0], request)
    title = (
      f"Top {len(rows)} of the {index.rows:,} images in {index.root} like {request.query_image}"
    )
    name = f"collection_image_{slug(os.path.basename(request.query_image), default='query')}"
    query = {"image": os.path.abspath(request.query_image)}
    _report_ranking(index, outputs, name, title, rows, scores, query)
  if request.off_topic is not None:
    rows, scores = least_similar_rows(
      index.embeddings_ND, model.encode_texts(request.off_topic)[0], k
    )
    title = f"The {len(rows)} images of {index.root} least like {request.off_topic!r}"
    name = f"collection_off_topic_{slug(request.off_topic, default='description')}"
    _report_ranking(index, outputs, name, title, rows, scores, {"off_topic": request.off_topic})
  if request.outliers:
    rows, scores = least_similar_rows(index.embeddings_ND, mean_direction(index.embeddings_ND), k)
    title = f"The {len(rows)} images of {index.root} furthest from the collection's mean direction"
    _report_ranking(
      index, outputs, "collection_outliers", title, rows, scores, {"outliers": "mean direction"}
    )
  if request.duplicates is not None:
    _report_duplicates(index, outputs, request.duplicates)


def _similar_images(index: CollectionIndex, query_emb_D: np.ndarray, request: CollectionRequest):
  """The top-k rows like a query image, the query's own file left out when it is in the
  collection (it would come first, at 1.0)."""
  rows, scores = top_k_rows(index.embeddings_ND, query_emb_D, request.top_k + 1)
  keep = [not _same_file(request.query_image, path) for path in index.paths(rows)]
  return rows[keep][: request.top_k], scores[keep][: request.top_k]


def _same_file(a: str, b: str) -> bool:
  """Whether two paths name one file (through a link too); a path that is gone names none."""
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def _report_ranking(index, outputs, name, title, rows, scores, query: dict) -> None:
  """Prints a ranked list of images and saves it as <name>.json, .png (a grid) and .html."""
  relative = [record["path"] for record in index.records(rows)]
  paths = [index.absolute(path) for path in relative]
  ranked = list(enumerate(zip(relative, scores, strict=True), 1))
  captions = [f"{rank}. {score:.4f}\n{path}" for rank, (path, score) in ranked]
  print(f"{title}:")
  for caption in captions:
    print("  " + caption.replace("\n", "  "))
  results = [
    {"rank": rank, "path": index.absolute(path), "score": round(float(score), 6)}
    for rank, (path, score) in ranked
  ]
  outputs.json(f"{name}.json", {"query": query, **_about(index), "results": results})
  save_image_grid(
    [resize_and_center_crop(open_image(path), THUMBNAIL_PX) for path in paths],
    captions,
    outputs.path(f"{name}.png"),
    suptitle=title,
  )
  write_image_page(outputs.path(f"{name}.html"), title, [list(zip(paths, captions, strict=True))])


def _report_duplicates(index: CollectionIndex, outputs: EvalOutputs, threshold: float) -> None:
  """Prints the near-duplicate pairs and saves them as JSON and an HTML page (a pair a row)."""
  pairs = near_duplicate_pairs(index.embeddings_ND, threshold)
  kept = (
    f" (the {len(pairs.scores_P):,} most similar kept)" if pairs.found > len(pairs.scores_P) else ""
  )
  title = (
    f"{pairs.found:,} pairs of images at cosine similarity >= {threshold} among the "
    f"{index.rows:,} in {index.root}{kept}"
  )
  print(f"{title}:")
  relative = [[record["path"] for record in index.records(pair)] for pair in pairs.rows_P2]
  for (first, second), score in list(zip(relative, pairs.scores_P, strict=True))[:PRINTED]:
    print(f"  {score:.4f}  {first}  {second}")
  name = f"collection_duplicates_{threshold:g}"
  if len(relative) > PRINTED:
    print(f"  ... and {len(relative) - PRINTED:,} more in {name}.json and {name}.html")
  results = [
    {"score": round(float(score), 6), "paths": [index.absolute(path) for path in pair]}
    for pair, score in zip(relative, pairs.scores_P, strict=True)
  ]
  outputs.json(f"{name}.json", {"threshold": threshold, **_about(index), "pairs": results})
  write_image_page(
    outputs.path(f"{name}.html"),
    title,
    [
      [(index.absolute(path), f"{score:.4f}\n{path}") for path in pair]
      for pair, score in zip(relative, pairs.scores_P, strict=True)
    ],
  )


def _about(index: CollectionIndex) -> dict:
  return {"index": index.path, "root": index.root, "images": index.rows, "model": index.fingerprint}
