"""What eval.py does with a workdir: score one checkpoint on a split, answer queries, run the suite.

    evaluate_workdir(EvalRequest(workdir=..., ...))

Every input is checked before the model is restored or anything is embedded: the flags
(EvalRequest), the query image, the checkpoint asked for and its stored config, the split, the
suite's options. Results are printed and written to <workdir>/eval/: <split>_retrieval.json, a
JSON per query (and a PNG grid per text query), and the suite's files; a classifier's workdir gets
<split>_classification.json and a confusion matrix instead, or its probabilities for a query. A
split's embeddings are kept in <workdir>/eval/embeddings/ (STORE) for the next query.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import ml_collections

from jclip.data.images import open_image, resize_and_center_crop
from jclip.data.labelled import IMAGE_COLUMN, LABEL_COLUMN, read_labelled_images
from jclip.data.sources import class_names_of, first_examples, make_source
from jclip.errors import UserError
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.evaluators import ClassificationEvaluator, RetrievalEvaluator
from jclip.evaluation.labelled import LabelledImagesEvaluator, LabelledOptions, check_bank
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.query import report_image_query, report_probabilities, report_text_query
from jclip.evaluation.seen_in_training import find_seen_in_training
from jclip.evaluation.suite import SuiteOptions, check_options, run_suite
from jclip.evaluation.zeroshot import softmax, zero_shot_probabilities
from jclip.pixels import normalize_images
from jclip.runs.checkpoint import Checkpoints, Selected
from jclip.runs.restore import restore_model
from jclip.slug import slug

# Where eval.py keeps a split's embeddings under a checkpoint's weights, inside <workdir>/eval/.
STORE = "embeddings"


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """One eval.py invocation; each field is the flag of the same name."""

  workdir: str
  step: str | None = None  # "best", "latest", a step number; None: best if kept, else latest
  split: str = "val"
  data_root: str | None = None  # evaluate on this folder instead of the config's data.root
  query_text: str | None = None
  query_image: str | None = None
  labels: Sequence[str] | None = None  # with query_image: zero-shot among these, no split read
  querybank: str | None = None  # a split whose first querybank_size examples normalise retrieval
  querybank_size: int = 10_000
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
    if self.querybank is not None and self.querybank == self.split:
      raise UserError(
        f"--querybank={self.querybank} is the split being evaluated: its queries would normalise "
        "themselves. Use a split the test queries are not in (--querybank=train)."
      )
    if self.labels is not None:
      if self.query_image is None:
        raise UserError("--labels classifies the --query_image among them: give --query_image.")
      if len(self.labels) < 2 or not all(label.strip() for label in self.labels):
        raise UserError(
          f"--labels={','.join(self.labels)!r}: give two or more non-empty labels, "
          'e.g. --labels="dog,cat,bike".'
        )


def _on_data_root(config, data_root: str, workdir: str):
  """The run's config pointed at another image-caption folder (--data_root)."""
  if config.data.name != "folder":
    raise UserError(
      f"--data_root applies to image-caption folders; {workdir} was "
      f"trained on data.name={config.data.name!r}. Leave --data_root out."
    )
  config.data.root = data_root
  return config


def stored_config(
  workdir: str, step: str | None, data_root: str | None = None
) -> tuple[Selected, ml_collections.ConfigDict]:
  """The checkpoint that --step names (the newest readable one for the latest) and the config
  stored with it, on the folder --data_root when one is given; nothing is restored yet."""
  checkpoints = Checkpoints(workdir, create=False)
  selected, config, _ = checkpoints.newest_readable(checkpoints.config, checkpoints.select(step))
  return selected, config if data_root is None else _on_data_root(config, data_root, workdir)


def _checked_config(request: EvalRequest, config):
  """The stored config, checked against the request and pointed at --data_root if given."""
  if request.data_root is not None:
    config = _on_data_root(config, request.data_root, request.workdir)
  if config.task != "clip":
    if request.suite or request.labels is not None:
      raise UserError(
        f"{request.workdir} holds a {config.task}: --suite and --labels need a CLIP "
        "workdir. Without them eval.py reports its classification metrics, or classifies a "
        "--query_image / --query_text."
      )
    wrong = "query_text" if config.task == "image_classifier" else "query_image"
    if getattr(request, wrong) is not None:
      right = "query_image" if wrong == "query_text" else "query_text"
      raise UserError(
        f"{request.workdir} holds a {config.task}: it classifies a --{right}, not a --{wrong}."
      )
  return config


def evaluate_workdir(request: EvalRequest) -> None:
  # Every input is checked before the weights are restored or anything is embedded: the query
  # image, the checkpoint and its stored config against the request, the split, the suite.
  query_image = None if request.query_image is None else open_image(request.query_image)
  selected, config = stored_config(request.workdir, request.step)
  training_data = config.data.copy_and_resolve_references()
  config = _checked_config(request, config)
  queried = request.query_text is not None or query_image is not None
  source = None
  if not (request.labels is not None or (config.task != "clip" and queried)):
    source = make_source(config.data, request.split)  # a query of the model alone reads no split
  if request.suite:
    check_options(request.suite, class_names_of(source), len(source))
  bank_source = None
  if request.querybank is not None:
    if queried or config.task != "clip":
      raise UserError(
        "--querybank normalises a CLIP's retrieval report; leave it out of queries and classifiers."
      )
    bank_source = first_examples(
      make_source(config.data, request.querybank), request.querybank_size
    )
  # Figures of images the run trained on flatter it: a report says how many (a query needs not).
  own_training_split = request.data_root is None and request.split == "train"
  seen = None
  if source is not None and not queried and not own_training_split:
    seen = find_seen_in_training(source, training_data)

  restored = restore_model(request.workdir, selected)
  print(f"Loaded step {restored.step} of {request.workdir}: {restored.checkpoint.reason}.")
  predictor = Predictor(restored.model, restored.tokenizer, config)
  outputs = EvalOutputs(os.path.join(request.workdir, "eval"))
  if seen is not None:
    outputs.json(f"{request.split}_seen_in_training.json", seen.to_json())
    if seen.indices:
      print(seen.warning(request.split))
  variables, batch_size = predictor.on_devices(restored.variables), request.batch_size
  query_view = None
  if query_image is not None:
    query_view = normalize_images(resize_and_center_crop(query_image, config.data.image_size))
  if source is None:
    _classify_query(request, config, predictor, variables, query_view, outputs)
    print(outputs.summary())
    return
  store = os.path.join(outputs.out_dir, STORE)
  split = EvalSplit(source, config, restored.tokenizer, keep_views=False, store_dir=store)
  if config.task != "clip":
    evaluator = ClassificationEvaluator(split, predictor, batch_size)
    evaluator.report(evaluator(variables), outputs)
  if request.query_text is not None:
    report_text_query(
      request.query_text,
      predictor.texts(variables, [request.query_text])[0],
      source,
      split.image_embeddings(predictor, variables, batch_size),
      request.top_k,
      outputs,
    )
  if query_view is not None:
    report_image_query(
      request.query_image,
      predictor.image_batch(variables, query_view[None])[0],
      source,
      split.captions,
      split.text_to_image_M,
      split.text_embeddings(predictor, variables, batch_size),
      request.top_k,
      outputs,
    )
  if config.task == "clip" and not queried:
    bank = None
    if bank_source is not None:
      bank = EvalSplit(bank_source, config, restored.tokenizer, keep_views=False, store_dir=store)
    retrieval = RetrievalEvaluator(split, predictor, batch_size, querybank=bank)
    retrieval.report(retrieval(variables), outputs)
  if request.suite:
    run_suite(split, predictor, variables, outputs, request.workdir, request.suite, batch_size)
  else:
    print(outputs.summary())


def _classify_query(request: EvalRequest, config, predictor, variables, query_view, outputs):
  """A query that needs no split: a classifier's probabilities for the --query_image (or
  --query_text), or zero-shot's for the --query_image among --labels."""
  if config.task == "clip":
    probs_C = zero_shot_probabilities(
      predictor.image_batch(variables, query_view[None]),
      lambda texts: predictor.texts(variables, texts),
      list(request.labels),
      scale=predictor.logit_scale(variables),
    )[0]
    class_names, what = list(request.labels), request.query_image
    heading = f"Zero-shot probabilities of {what} among {len(class_names)} labels:"
  else:
    class_names = config.data.class_names or [f"class {c}" for c in range(config.model.num_classes)]
    if query_view is not None:
      inputs = query_view[None]
    else:
      inputs = predictor.tokenizer.encode([request.query_text], config.data.max_text_len)
    probs_C = softmax(predictor.logits_batch(variables, inputs))[0]
    what = request.query_image if query_view is not None else request.query_text
    heading = f"{config.task} probabilities of {what!r}:"
  stem = "query_image_" if query_view is not None else "query_text_"
  report_probabilities(
    heading,
    list(class_names),
    probs_C,
    outputs,
    {"name": stem + slug(os.path.basename(what), default="query") + "_classes", "input": what},
  )


@dataclasses.dataclass(frozen=True)
class LabelledRequest:
  """eval.py --labelled_images: a CLIP evaluated on a bank of labelled images
  (jclip/evaluation/labelled.py); each field is the flag of the same name."""

  workdir: str
  labelled_images: str  # a folder of class folders, or a .csv/.tsv table
  step: str | None = None
  image_column: str = IMAGE_COLUMN
  label_column: str = LABEL_COLUMN
  caption_column: str | None = None
  class_names: Sequence[str] | None = None  # the classes and their order; None: the labels
  options: LabelledOptions = LabelledOptions()
  batch_size: int = 256


def evaluate_labelled_images(request: LabelledRequest) -> None:
  """Zero-shot, k-NN and logistic regression on the bank: printed, and written to
  <workdir>/eval/. The checkpoint, the bank and the options are checked before the model is
  restored."""
  selected, config = stored_config(request.workdir, request.step)
  if config.task != "clip":
    raise UserError(
      f"{request.workdir} holds a {config.task}: --labelled_images evaluates a CLIP "
      "(zero-shot needs its text tower)."
    )
  bank = read_labelled_images(
    request.labelled_images,
    request.image_column,
    request.label_column,
    request.caption_column,
    request.class_names,
  )
  check_bank(bank.class_names, bank.labels(), request.options)
  seen = find_seen_in_training(bank, config.data)

  restored = restore_model(request.workdir, selected)
  print(f"Loaded step {restored.step} of {request.workdir}: {restored.checkpoint.reason}.")
  predictor = Predictor(restored.model, restored.tokenizer, config)
  split = EvalSplit(bank, config, restored.tokenizer, keep_views=False)
  evaluator = LabelledImagesEvaluator(split, predictor, request.batch_size, request.options, seen)
  outputs = EvalOutputs(os.path.join(request.workdir, "eval"))
  evaluator.report(evaluator(predictor.on_devices(restored.variables)), outputs)
  print(outputs.summary())
