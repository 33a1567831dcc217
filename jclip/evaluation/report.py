"""What eval.py does with a workdir: score one checkpoint on a split, answer queries, run the suite.

    evaluate_workdir(EvalRequest(workdir=..., ...))

Every input is checked before the model is restored or anything is embedded: the flags
(EvalRequest), the query image, the checkpoint asked for and its stored config, the split, the
suite's options. Results are printed and written to <workdir>/eval/: <split>_retrieval.json, a
PNG per text query, and the suite's files; a classifier's workdir gets <split>_classification.json
and a confusion matrix instead.
"""

from __future__ import annotations

import dataclasses
import json
import os

from jclip.data.images import open_image, resize_and_center_crop
from jclip.data.sources import class_names_of, labels_of, make_source
from jclip.errors import UserError
from jclip.evaluation.embedding import TrainedModel, embed_split
from jclip.evaluation.query import save_image_grid, top_k
from jclip.evaluation.retrieval import retrieval_metrics
from jclip.evaluation.suite import SuiteOptions, check_options, run_suite
from jclip.evaluation.trained_classifier import evaluate_classifier
from jclip.runs.checkpoint import Checkpoints
from jclip.runs.restore import restore_model
from jclip.slug import slug


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """One eval.py invocation; each field is the flag of the same name."""

  workdir: str
  step: str | None = None  # "best", "latest", a step number; None: best if kept, else latest
  split: str = "val"
  data_root: str | None = None  # evaluate on this folder instead of the config's data.root
  query_text: str | None = None
  query_image: str | None = None
  top_k: int = 5
  batch_size: int = 256
  suite: SuiteOptions | None = None  # None: no suite

  def __post_init__(self):
    if self.top_k < 1 or self.batch_size < 1:
      raise UserError(f"--top_k={self.top_k} and --batch_size={self.batch_size} must be at "
                       "least 1.")
    if self.query_text is not None and not self.query_text.strip():
      raise UserError("--query_text is empty: give a sentence to search the images with.")


def evaluate_workdir(request: EvalRequest) -> None:
  # Every input is checked before the weights are restored or anything is embedded: the query
  # image, the checkpoint and its stored config against the request, the split, the suite.
  query_image = None if request.query_image is None else open_image(request.query_image)
  checkpoints = Checkpoints(request.workdir, create=False)
  selected, config, _ = checkpoints.newest_readable(checkpoints.config,
                                                     checkpoints.select(request.step))
  if request.data_root is not None:
    if config.data.name != "folder":
      raise UserError(f"--data_root applies to image-caption folders; {request.workdir} was "
                       f"trained on data.name={config.data.name!r}. Leave --data_root out.")
    config.data.root = request.data_root
  is_clip = config.get("task", "clip") == "clip"
  if not is_clip and (request.suite or request.query_text is not None or query_image is not None):
    raise UserError(f"{request.workdir} holds a {config.task}: queries and --suite need a CLIP "
                     "workdir. Without them eval.py reports its classification metrics.")
  source = make_source(config.data, request.split)
  if request.suite:
    check_options(request.suite, class_names_of(source), len(source))

  restored = restore_model(request.workdir, selected)
  print(f"Loaded step {restored.step} of {request.workdir}: {restored.checkpoint.reason}.")
  out_dir = os.path.join(request.workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  if not is_clip:
    evaluate_classifier(restored, source, request.split, out_dir, request.batch_size)
    return
  trained = TrainedModel.from_restored(restored)
  print(f"Embedding {len(source)} {request.split} images and their captions.")
  embedded = embed_split(trained, source, request.batch_size)
  if request.query_text is not None:
    _query_text(trained, source, request, embedded[0], out_dir)
  if query_image is not None:
    _query_image(trained, resize_and_center_crop(query_image, config.data.image_size), request,
                 embedded, source.split)
  if request.query_text is None and query_image is None:
    _report_retrieval(embedded, request.split, out_dir)
  if request.suite:
    run_suite(trained, source, class_names_of(source), labels_of(source), embedded, out_dir,
              request.workdir, request.suite)


def _query_text(trained: TrainedModel, source, request: EvalRequest, image_emb_ND, out_dir: str):
  query_emb_D = trained.embed_texts([request.query_text])[0]
  indices, scores = top_k(query_emb_D, image_emb_ND, request.top_k)
  print(f"Top {len(indices)} {request.split} images for {request.query_text!r}:")
  for rank, (index, score) in enumerate(zip(indices, scores), 1):
    print(f"  {rank}. image {index}  score {score:.4f}  ({source.captions(index)[0]})")
  path = os.path.join(out_dir, f"query_text_{slug(request.query_text, default='query')}.png")
  save_image_grid([source[i]["image"] for i in indices],
                  [f"#{i}  {s:.3f}" for i, s in zip(indices, scores)], path,
                  suptitle=request.query_text)
  print(f"Saved {path}")


def _query_image(trained: TrainedModel, image_HWC, request: EvalRequest, embedded, split: str):
  _, text_emb_MD, text_to_image_M, captions = embedded
  query_emb_D = trained.embed_image_arrays(image_HWC[None])[0]
  indices, scores = top_k(query_emb_D, text_emb_MD, request.top_k)
  print(f"Top {len(indices)} {split} captions for {request.query_image}:")
  for rank, (index, score) in enumerate(zip(indices, scores), 1):
    print(f"  {rank}. score {score:.4f}  {captions[index]!r} (image {text_to_image_M[index]})")


def _report_retrieval(embedded, split: str, out_dir: str) -> None:
  image_emb_ND, text_emb_MD, text_to_image_M, _ = embedded
  metrics = retrieval_metrics(image_emb_ND, text_emb_MD, text_to_image_M)
  print(f"{split} retrieval ({len(image_emb_ND)} images, {len(text_emb_MD)} captions):")
  for direction in ("i2t", "t2i"):
    print(f"  {direction}: " + "  ".join(f"R@{k}={metrics[f'{direction}_r{k}']:.3f}"
                                        for k in (1, 5, 10)) +
          f"  median rank {metrics[f'{direction}_median_rank']:.0f}")
  print(f"  rsum (the six recalls added up) {metrics['rsum']:.3f}")
  path = os.path.join(out_dir, f"{split}_retrieval.json")
  with open(path, "w") as f:
    json.dump(metrics, f, indent=2)
  print(f"Saved {path}")
