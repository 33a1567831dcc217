"""eval.py's studies: class attributes in the prompts (prompt_study.py), template sets
(template_sets.py) and other workdirs side by side (compare.py).

    run_studies(StudyRequest(workdir=..., prompt_study=load_prompt_study(path), ...))

The prompt studies read a labelled split of the workdir's data: the images of `selection_split`
choose the prompts and those of `split` are scored; without a selection split, `split` is cut in
two class by class (`selection_fraction` of each class chooses, the rest is scored; shuffled with
`seed`, which also draws the control words). The comparison scores every workdir, --workdir first,
on the `split` of its own data. Every workdir, checkpoint, split and study file is checked before a
model is restored or anything is embedded. Results are printed and written to <workdir>/eval/:
<split>_prompt_study.json/.png, <split>_template_sets.json/.png, <split>_compare_workdirs.json/.png.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import ml_collections

from jclip.data.sources import class_names_of, make_source
from jclip.errors import UserError
from jclip.evaluation.compare import format_comparison, save_comparison_png, workdir_row
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.prompt_scoring import ImageSet, selection_and_evaluation
from jclip.evaluation.prompt_study import (
  PromptStudy,
  check_study,
  format_prompt_study,
  run_prompt_study,
  save_prompt_study_png,
)
from jclip.evaluation.report import stored_config
from jclip.evaluation.template_sets import (
  compare_template_sets,
  format_template_comparison,
  save_template_comparison_png,
)
from jclip.runs.checkpoint import Selected
from jclip.runs.restore import restore_model


@dataclasses.dataclass(frozen=True)
class StudyRequest:
  """The studies of one eval.py invocation; each field is the flag of the same name."""

  workdir: str
  step: str | None = None  # of every workdir: "best", "latest", a step; None: best, else latest
  split: str = "val"
  data_root: str | None = None
  batch_size: int = 256
  prompt_study: PromptStudy | None = None
  template_sets: Mapping[str, Sequence[str]] | None = None
  compare_workdirs: Sequence[str] = ()  # besides --workdir
  selection_split: str | None = None  # None: cut `split` in two
  selection_fraction: float = 0.5
  max_attributes: int = 3
  seed: int = 0

  def __post_init__(self):
    if self.selection_split == self.split:
      raise UserError(
        f"--selection_split={self.selection_split} is --split itself: the prompts would be "
        "chosen on the images they are scored on. Name another split, or leave "
        "--selection_split out to cut the split in two (--selection_fraction)."
      )

  @property
  def chooses_prompts(self) -> bool:
    return self.prompt_study is not None or self.template_sets is not None


@dataclasses.dataclass(frozen=True)
class _Workdir:
  """A workdir opened for the studies: its checkpoint chosen, its config read, its sources made;
  nothing restored yet."""

  path: str
  selected: Selected
  config: ml_collections.ConfigDict
  source: Sequence[dict]  # the split scored
  selection_source: Sequence[dict] | None = None  # the images that choose, if another split


def _open(path: str, request: StudyRequest, chooses_prompts: bool) -> _Workdir:
  selected, config = stored_config(path, request.step, request.data_root)
  if config.task != "clip":
    raise UserError(
      f"{path} holds a {config.task}: the prompt studies and the comparison need CLIP workdirs."
    )
  source = make_source(config.data, request.split)
  if not chooses_prompts:
    return _Workdir(path, selected, config, source)
  class_names = class_names_of(source)
  if class_names is None:
    raise UserError(
      f"The {request.split} split of {path} has no class labels (a folder needs a 'category' "
      "column in captions.tsv): the prompt studies score zero-shot classification."
    )
  if request.prompt_study is not None:
    check_study(request.prompt_study, class_names, request.max_attributes)
  if request.selection_split is None:
    return _Workdir(path, selected, config, source)
  selection_source = make_source(config.data, request.selection_split)
  if class_names_of(selection_source) != class_names:
    raise UserError(
      f"--selection_split={request.selection_split} has the classes "
      f"{class_names_of(selection_source)}, --split={request.split} has {class_names}: "
      "the prompts must be chosen for the classes they are scored on."
    )
  return _Workdir(path, selected, config, source, selection_source)


def _images(split: EvalSplit, predictor: Predictor, variables, batch_size: int) -> ImageSet:
  """The embedded images of a labelled split, as the evaluators embed them."""
  embedded = split.embed(predictor, variables, batch_size)
  return ImageSet(
    f"{split.name} ({len(split.source)} images)", embedded.image_emb_ND, embedded.labels_N
  )


def _prompt_studies(
  request: StudyRequest,
  workdir: _Workdir,
  split: EvalSplit,
  predictor: Predictor,
  variables,
  outputs: EvalOutputs,
) -> None:
  """The attribute study and the template sets on the workdir's images (the module docstring)."""
  batch_size, name = request.batch_size, request.split
  images = _images(split, predictor, variables, batch_size)
  if workdir.selection_source is None:
    selection, evaluation = selection_and_evaluation(
      images, request.selection_fraction, request.seed
    )
  else:
    print(f"Embedding the {len(workdir.selection_source)} {request.selection_split} images.")
    selection_split = EvalSplit(
      workdir.selection_source, workdir.config, predictor.tokenizer, keep_views=False
    )
    selection, evaluation = _images(selection_split, predictor, variables, batch_size), images
  class_names = split.class_names
  embed_texts = lambda texts: predictor.texts(variables, texts, batch_size)  # noqa: E731
  scale = predictor.logit_scale(variables)
  if request.prompt_study is not None:
    result = run_prompt_study(
      request.prompt_study,
      class_names,
      selection,
      evaluation,
      embed_texts,
      scale,
      request.max_attributes,
      request.seed,
    )
    print(format_prompt_study(result))
    outputs.json(f"{name}_prompt_study.json", result)
    save_prompt_study_png(result, outputs.path(f"{name}_prompt_study.png"))
  if request.template_sets is not None:
    result = compare_template_sets(
      request.template_sets, class_names, selection, evaluation, embed_texts, scale
    )
    print(format_template_comparison(result))
    outputs.json(f"{name}_template_sets.json", result)
    save_template_comparison_png(result, outputs.path(f"{name}_template_sets.png"))


def run_studies(request: StudyRequest) -> None:
  """The studies of `request` (the module docstring): printed, and written to <workdir>/eval/."""
  main = _open(request.workdir, request, request.chooses_prompts)
  others = [
    _open(path, request, chooses_prompts=False)
    for path in dict.fromkeys(request.compare_workdirs)
    if path != request.workdir
  ]
  outputs, rows = EvalOutputs(os.path.join(request.workdir, "eval")), []
  for workdir in [main, *others]:
    restored = restore_model(workdir.path, workdir.selected)
    print(f"Loaded step {restored.step} of {workdir.path}: {restored.checkpoint.reason}.")
    predictor = Predictor(restored.model, restored.tokenizer, workdir.config)
    split = EvalSplit(workdir.source, workdir.config, restored.tokenizer, keep_views=False)
    variables = predictor.on_devices(restored.variables)
    if workdir is main and request.chooses_prompts:
      _prompt_studies(request, workdir, split, predictor, variables, outputs)
    if request.compare_workdirs:
      rows.append(
        workdir_row(
          workdir.path,
          restored.checkpoint,
          split,
          predictor,
          variables,
          request.batch_size,
        )
      )
  if rows:
    print(format_comparison(rows, request.split))
    outputs.json(f"{request.split}_compare_workdirs.json", {"split": request.split, "rows": rows})
    save_comparison_png(rows, outputs.path(f"{request.split}_compare_workdirs.png"))
  print(outputs.summary())
