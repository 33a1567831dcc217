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
import os

from jclip.data.images import open_image, resize_and_center_crop
from jclip.data.sources import class_names_of, make_source
from jclip.errors import UserError
from jclip.evaluation.embedding import EmbeddedSplit, EvalSplit, Predictor
from jclip.evaluation.evaluators import ClassificationEvaluator, RetrievalEvaluator
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.query import save_image_grid, top_k
from jclip.evaluation.suite import SuiteOptions, check_options, run_suite
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
      raise UserError(
        f"--top_k={self.top_k} and --batch_size={self.batch_size} must be at least 1."
      )
    if self.query_text is not None and not self.query_text.strip():
      raise UserError("--query_text is empty: give a sentence to search the images with.")


def evaluate_workdir(request: EvalRequest) -> None:
  # Every input is checked before the weights are restored or anything is embedded: the query
  # image, the checkpoint and its stored config against the request, the split, the suite.
  query_image = None if request.query_image is None else open_image(request.query_image)
  checkpoints = Checkpoints(request.workdir, create=False)
  selected, config, _ = checkpoints.newest_readable(
    checkpoints.config, checkpoints.select(request.step)
  )
  if request.data_root is not None:
    if config.data.name != "folder":
      raise UserError(
        f"--data_root applies to image-caption folders; {request.workdir} was "
        f"trained on data.name={config.data.name!r}. Leave --data_root out."
      )
    config.data.root = request.data_root
  is_clip = config.task == "clip"
  if not is_clip and (request.suite or request.query_text is not None or query_image is not None):
    raise UserError(
      f"{request.workdir} holds a {config.task}: queries and --suite need a CLIP "
      "workdir. Without them eval.py reports its classification metrics."
    )
  source = make_source(config.data, request.split)
  if request.suite:
    check_options(request.suite, class_names_of(source), len(source))

  restored = restore_model(request.workdir, selected)
  print(f"Loaded step {restored.step} of {request.workdir}: {restored.checkpoint.reason}.")
  predictor = Predictor(restored.model, restored.tokenizer, config)
  split = EvalSplit(source, config, restored.tokenizer, keep_views=False)
  outputs = EvalOutputs(os.path.join(request.workdir, "eval"))
  variables, batch_size = predictor.on_devices(restored.variables), request.batch_size
  if not is_clip:
    evaluator = ClassificationEvaluator(split, predictor, batch_size)
    evaluator.report(evaluator(variables), outputs)
    print(outputs.summary())
    return
  print(f"Embedding {len(source)} {request.split} images and their captions.")
  embedded = split.embed(predictor, variables, batch_size)
  if request.query_text is not None:
    _query_text(predictor, variables, split, request, embedded, outputs)
  if query_image is not None:
    _query_image(
      predictor,
      variables,
      resize_and_center_crop(query_image, config.data.image_size),
      request,
      embedded,
    )
  if request.query_text is None and query_image is None:
    retrieval = RetrievalEvaluator(split, predictor, batch_size)
    retrieval.report(retrieval(variables), outputs)
  if request.suite:
    run_suite(split, predictor, variables, outputs, request.workdir, request.suite, batch_size)
  else:
    print(outputs.summary())


def _query_text(
  predictor: Predictor,
  variables,
  split: EvalSplit,
  request: EvalRequest,
  embedded: EmbeddedSplit,
  outputs: EvalOutputs,
) -> None:
  query_emb_D = predictor.texts(variables, [request.query_text])[0]
  indices, scores = top_k(query_emb_D, embedded.image_emb_ND, request.top_k)
  print(f"Top {len(indices)} {request.split} images for {request.query_text!r}:")
  first_captions = [split.source.captions(index)[0] for index in indices]
  for rank, (index, score, caption) in enumerate(
    zip(indices, scores, first_captions, strict=True), 1
  ):
    print(f"  {rank}. image {index}  score {score:.4f}  ({caption})")
  path = outputs.path(f"query_text_{slug(request.query_text, default='query')}.png")
  save_image_grid(
    [split.source[i]["image"] for i in indices],
    [f"#{i}  {s:.3f}\n{c}" for i, s, c in zip(indices, scores, first_captions, strict=True)],
    path,
    suptitle=request.query_text,
  )


def _query_image(
  predictor: Predictor, variables, image_HW3, request: EvalRequest, embedded: EmbeddedSplit
) -> None:
  query_emb_D = predictor.images(variables, image_HW3[None])[0]
  indices, scores = top_k(query_emb_D, embedded.text_emb_MD, request.top_k)
  print(f"Top {len(indices)} {embedded.split} captions for {request.query_image}:")
  for rank, (index, score) in enumerate(zip(indices, scores, strict=True), 1):
    print(
      f"  {rank}. score {score:.4f}  {embedded.captions[index]!r} (image "
      f"{embedded.text_to_image_M[index]})"
    )
