"""Prompt studies: do a class's attributes in its prompt help zero-shot classification, and more
than random words do?

A study file (JSON) gives the prompts and, for every class, its candidate attributes:

  {
    "template": "a picture of a {} that is {attributes}",     k >= 1: '{}' is the class,
                                                              '{attributes}' its k attributes
    "base_template": "a picture of a {}",                     k = 0 (optional, default
                                                              "a photo of a {}.")
    "attributes": {"circle": ["red", "large", ...], ...},     every class of the images, no other
    "control_words": ["table", "river", ...]                  optional: the control arm
  }

k attributes are written as an English list: "red", "red and large", "red, large and small".
docs/prompt_study_shapes.json is a study of the synthetic shapes.

The search, the same for both arms:

  k = 0   every class in base_template: plain zero-shot with that one template
  k >= 1  every class adds one of its remaining candidates to its k-1 attributes: the one that
          gives the highest top-1 accuracy over all the SELECTION images while the other classes
          keep their k-1 attributes (ties: the higher mean log-probability of the true class, then
          the earlier candidate in the file). The classes choose independently of each other's
          step-k choice, so their order does not matter.

Overall accuracy, not the class's own: a prompt that draws every image to its class has a class
accuracy of 1 and ruins the other classes; the overall accuracy counts both what a class gains and
what it takes from the others.

The control arm (random words, as in Roth et al. 2023, "Waffling around for performance"): each
class draws, with a seeded RNG, as many words from control_words as it has candidate attributes,
and the same search chooses among them. The two arms then have the same template, the same number
of candidates and the same search, and differ only in what the words mean. Random words added
without a search would be a weaker control: the attributes would beat it by the search alone.

Every figure reported is one of the EVALUATION images, which the search never sees
(prompt_scoring.py); the selection images' figure is printed beside it as the optimism of a choice.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from jclip.errors import UserError  # noqa: E402
from jclip.evaluation.prompt_scoring import (  # noqa: E402
  PER_CLASS_SHOWN,
  ImageSet,
  PerClassColumns,
  PromptEmbeddings,
  zero_shot_scores,
)
from jclip.evaluation.zeroshot import (  # noqa: E402
  PLACEHOLDER,
  check_templates,
  zero_shot_logits,
  zero_shot_weights,
)

ATTRIBUTES = "{attributes}"
DEFAULT_BASE_TEMPLATE = "a photo of a {}."
REQUIRED_KEYS = ("template", "attributes")
OPTIONAL_KEYS = ("base_template", "control_words")


@dataclasses.dataclass(frozen=True)
class PromptStudy:
  """A study file's contents (the module docstring), checked."""

  template: str
  attributes: dict[str, list[str]]
  base_template: str = DEFAULT_BASE_TEMPLATE
  control_words: list[str] | None = None
  where: str = "the prompt study"  # its file, for messages


def _words(value, where: str) -> list[str]:
  """A non-empty list of distinct non-empty strings, or a UserError naming `where`."""
  if not isinstance(value, list) or not value:
    raise UserError(f"{where} must be a non-empty list of strings, got {value!r}.")
  for word in value:
    if not isinstance(word, str) or not word.strip():
      raise UserError(f"{where} holds {word!r}: every entry must be a non-empty string.")
  repeated = sorted({word for word in value if value.count(word) > 1})
  if repeated:
    raise UserError(f"{where} lists {repeated} more than once: list each word once.")
  return list(value)


def prompt_study_from_dict(data, where: str) -> PromptStudy:
  """The study of a parsed study file; every mistake is a one-line UserError naming its key."""
  if not isinstance(data, dict):
    raise UserError(f"{where} must hold a JSON object with the keys {list(REQUIRED_KEYS)}.")
  unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
  missing = [key for key in REQUIRED_KEYS if key not in data]
  if unknown or missing:
    raise UserError(
      f"{where}: "
      + (f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}")
      + f"; the keys are {list(REQUIRED_KEYS)} and optionally {list(OPTIONAL_KEYS)}."
    )
  template, base_template = data["template"], data.get("base_template", DEFAULT_BASE_TEMPLATE)
  for key, value in (("template", template), ("base_template", base_template)):
    if not isinstance(value, str):
      raise UserError(f"{where}: {key} must be a string, got {value!r}.")
    check_templates([value], f"{key} in {where}")
  if ATTRIBUTES not in template:
    raise UserError(
      f"{where}: template {template!r} has no '{ATTRIBUTES}' where the attributes go; e.g. "
      "'a photo of a {} because of {attributes}.'."
    )
  if ATTRIBUTES in base_template:
    raise UserError(
      f"{where}: base_template {base_template!r} is the prompt with no attribute: remove its "
      f"'{ATTRIBUTES}'."
    )
  attributes = data["attributes"]
  if not isinstance(attributes, dict) or not attributes:
    raise UserError(f"{where}: attributes must be a JSON object {{class name: [attribute, ...]}}.")
  attributes = {
    name: _words(words, f"{where}: attributes of class {name!r}")
    for name, words in attributes.items()
  }
  control = data.get("control_words")
  return PromptStudy(
    template,
    attributes,
    base_template,
    None if control is None else _words(control, f"{where}: control_words"),
    where,
  )


def load_prompt_study(path: str) -> PromptStudy:
  """A study file (the module docstring), checked; its classes are checked against the images by
  `check_study`."""
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON: {e}.") from None
  return prompt_study_from_dict(data, path)


def check_study(study: PromptStudy, class_names: Sequence[str], max_attributes: int) -> None:
  """Raises UserError unless the study names exactly these classes, each with at least
  max_attributes candidates, and has as many control words as any class has candidates (the
  control's search gets as many candidates as the attributes' search)."""
  if len(class_names) < 2:
    raise UserError(f"A prompt study needs two or more classes; the images have {class_names}.")
  missing = [name for name in class_names if name not in study.attributes]
  unknown = [name for name in study.attributes if name not in class_names]
  if missing or unknown:
    raise UserError(
      f"{study.where}: attributes "
      + (f"lack the class(es) {missing}" if missing else f"name unknown class(es) {unknown}")
      + f"; the classes of the images are {list(class_names)}."
    )
  if max_attributes < 1:
    raise UserError(f"--max_attributes={max_attributes} must be at least 1.")
  for name in class_names:
    if len(study.attributes[name]) < max_attributes:
      raise UserError(
        f"{study.where}: class {name!r} has {len(study.attributes[name])} attribute(s), fewer "
        f"than --max_attributes={max_attributes}: add candidates or lower --max_attributes."
      )
  most = max(len(words) for words in study.attributes.values())
  if study.control_words is not None and len(study.control_words) < most:
    raise UserError(
      f"{study.where}: control_words has {len(study.control_words)} word(s), fewer than the "
      f"{most} candidates of the class with most attributes: the control must have as many "
      "candidates to choose from; add words."
    )


def english_list(words: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def write_prompt(template: str, class_name: str, attributes: Sequence[str]) -> str:
  """The template with the class in its '{}' and the attributes in its '{attributes}', in one
  pass: a class or an attribute that contains either placeholder is written as it is."""
  fill = {PLACEHOLDER: class_name, ATTRIBUTES: english_list(attributes) if attributes else ""}
  return re.sub(r"\{\}|\{attributes\}", lambda match: fill[match.group()], template)


def _prompts(study: PromptStudy, class_names: Sequence[str], attributes_C) -> list[str]:
  """Each class's one prompt: the template with its attributes, the base template with none."""
  return [
    write_prompt(study.template if attributes else study.base_template, name, attributes)
    for name, attributes in zip(class_names, attributes_C, strict=True)
  ]


def control_candidates(study: PromptStudy, class_names: Sequence[str], seed: int) -> list[list]:
  """Each class's control candidates: as many control words as it has attributes, drawn without
  replacement, class by class in order, by a generator seeded with `seed`."""
  rng = np.random.default_rng(seed)
  words = study.control_words
  return [
    [words[i] for i in rng.choice(len(words), len(study.attributes[name]), replace=False)]
    for name in class_names
  ]


def replaced_column_scores(
  logits_NC: np.ndarray, labels_N: np.ndarray, c: int, column_NA: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """For each candidate a, the top-1 accuracy and the mean log-probability of the true class when
  column c of the logits is replaced by column_NA[:, a]; as np.argmax would predict (the lower
  class index wins a tie) and in O(N x (C + A)), without building A matrices [N, C]."""
  labels_N = np.asarray(labels_N)
  others = np.delete(np.arange(logits_NC.shape[1]), c)
  other_logits_NO = logits_NC[:, others]
  best_other_N = other_logits_NO.max(axis=1)
  best_other_class_N = others[other_logits_NO.argmax(axis=1)]
  wins_NA = (column_NA > best_other_N[:, None]) | (
    (column_NA == best_other_N[:, None]) & (c < best_other_class_N[:, None])
  )
  predicted_NA = np.where(wins_NA, c, best_other_class_N[:, None])
  accuracy_A = np.mean(predicted_NA == labels_N[:, None], axis=0)
  log_normaliser_NA = np.logaddexp(np.logaddexp.reduce(other_logits_NO, axis=1)[:, None], column_NA)
  true_logit_NA = np.where(
    (labels_N == c)[:, None], column_NA, logits_NC[np.arange(len(labels_N)), labels_N][:, None]
  )
  return accuracy_A, np.mean(true_logit_NA - log_normaliser_NA, axis=0)


def greedy_choices(
  candidates_per_class: Sequence[Sequence[str]],
  study: PromptStudy,
  class_names: Sequence[str],
  selection: ImageSet,
  embed: PromptEmbeddings,
  scale: float,
  max_attributes: int,
) -> list[list[list[str]]]:
  """The search of the module docstring on the selection images: [k - 1][c] is class c's k
  attributes, in the order chosen, for k = 1..max_attributes."""
  chosen_C = [[] for _ in class_names]
  steps = []
  for _ in range(max_attributes):
    current = _prompts(study, class_names, chosen_C)
    logits_NC = zero_shot_logits(
      selection.image_emb_ND, zero_shot_weights(embed, [[p] for p in current]), scale
    )
    options_C = [
      [chosen + [word] for word in candidates if word not in chosen]
      for chosen, candidates in zip(chosen_C, candidates_per_class, strict=True)
    ]
    prompts_C = [
      [write_prompt(study.template, name, option) for option in options]
      for name, options in zip(class_names, options_C, strict=True)
    ]
    embed.prepare([prompt for prompts in prompts_C for prompt in prompts])  # one batch per step
    chosen_C = []
    for c, (options, prompts) in enumerate(zip(options_C, prompts_C, strict=True)):
      column_NA = zero_shot_logits(
        selection.image_emb_ND, zero_shot_weights(embed, [[p] for p in prompts]), scale
      )
      accuracy_A, log_prob_A = replaced_column_scores(logits_NC, selection.labels_N, c, column_NA)
      # max keeps the first of equal keys: the earlier candidate wins a complete tie.
      best = max(range(len(options)), key=lambda a: (accuracy_A[a], log_prob_A[a]))
      chosen_C.append(options[best])
    steps.append(chosen_C)
  return steps


def _arm_rows(
  steps: list[list[list[str]]],
  study: PromptStudy,
  class_names: Sequence[str],
  selection: ImageSet,
  evaluation: ImageSet,
  embed: PromptEmbeddings,
  scale: float,
) -> list[dict]:
  """One row per k = 0..max_attributes: each class's attributes and prompt, and the zero-shot
  figures of those prompts on both sets of images."""
  rows = []
  for k, chosen_C in enumerate([[[] for _ in class_names]] + steps):
    prompts = _prompts(study, class_names, chosen_C)
    on_selection, on_evaluation = (
      zero_shot_scores(images, class_names, [[p] for p in prompts], embed, scale)
      for images in (selection, evaluation)
    )
    rows.append(
      {
        "k": k,
        "attributes": dict(zip(class_names, chosen_C, strict=True)),
        "prompts": dict(zip(class_names, prompts, strict=True)),
        "selection_top1": on_selection["top1"],
        "evaluation_top1": on_evaluation["top1"],
        "evaluation_per_class": on_evaluation["per_class"],
      }
    )
  return rows


def run_prompt_study(
  study: PromptStudy,
  class_names: Sequence[str],
  selection: ImageSet,
  evaluation: ImageSet,
  embed_texts: Callable[[list[str]], np.ndarray],
  scale: float,
  max_attributes: int = 3,
  seed: int = 0,
) -> dict:
  """Both arms of the study (the module docstring) as a JSON-able dict: for k = 0..max_attributes,
  each class's chosen words and prompt, top-1 accuracy on the selection and on the evaluation
  images, and per-class accuracy on the evaluation images.

  Args:
    class_names: the classes that the labels of `selection` and `evaluation` index.
    selection, evaluation: disjoint images (prompt_scoring.selection_and_evaluation): the search
      sees only the first; every reported figure but selection_top1 is the second's.
    embed_texts: a list of texts -> their embeddings [M, D] (e.g. jclip.Model.encode_texts); each
      distinct prompt is embedded once.
    scale: the model's logit scale (it sets the log-probabilities that break ties).
    seed: draws the control words.
  """
  check_study(study, class_names, max_attributes)
  embed = PromptEmbeddings(embed_texts)
  arms = {"attributes": [study.attributes[name] for name in class_names]}
  if study.control_words is not None:
    arms["control"] = control_candidates(study, class_names, seed)
  result = {
    "study": study.where,
    "template": study.template,
    "base_template": study.base_template,
    "max_attributes": max_attributes,
    "seed": seed,
    "class_names": list(class_names),
    "chance": 1 / len(class_names),
    "selection": {"images": selection.description, "num_images": len(selection)},
    "evaluation": {"images": evaluation.description, "num_images": len(evaluation)},
    "candidates": {
      arm: dict(zip(class_names, candidates, strict=True)) for arm, candidates in arms.items()
    },
    "arms": {},
  }
  for arm, candidates in arms.items():
    steps = greedy_choices(candidates, study, class_names, selection, embed, scale, max_attributes)
    result["arms"][arm] = _arm_rows(steps, study, class_names, selection, evaluation, embed, scale)
  result["prompts_embedded"] = embed.num_embedded
  return result


def format_prompt_study(result: dict) -> str:
  """The study as a table: one line per k and arm (k = 0, the base template, once), then each
  class's chosen words in the order chosen."""
  classes, columns = result["class_names"], PerClassColumns(result["class_names"])
  lines = [
    f"Prompt study ({result['study']}), {len(classes)} classes, chance {result['chance']:.3f}:",
    f"  chosen on     {result['selection']['images']}",
    f"  reported on   {result['evaluation']['images']}",
    f"  k = 0: {result['base_template']!r}; k >= 1: {result['template']!r}",
    "",
    f"{'':16}{'top-1 accuracy':^21}{columns.title}",
    f"{'k':<2} {'arm':<11} {'selection':>9}  {'evaluation':>10}{columns.header()}",
  ]
  for k in range(result["max_attributes"] + 1):
    for arm, rows in result["arms"].items():
      if k == 0 and arm != "attributes":
        continue  # the base template: the same prompts in every arm
      row = rows[k]
      lines.append(
        f"{k:<2} {'base' if k == 0 else arm:<11} {row['selection_top1']:9.3f}  "
        f"{row['evaluation_top1']:10.3f}{columns.cells(row['evaluation_per_class'])}"
      )
  lines += ["", "Chosen words, in the order chosen:"]
  name_width = max(map(len, classes))
  for name in classes:
    chosen = "   ".join(
      f"{arm}: {', '.join(rows[-1]['attributes'][name])}" for arm, rows in result["arms"].items()
    )
    lines.append(f"  {name:<{name_width}}  {chosen}")
  return "\n".join(lines)


def save_prompt_study_png(result: dict, path: str) -> None:
  """Top-1 accuracy on the evaluation images against k, one line per arm, with chance; beside it
  (up to PER_CLASS_SHOWN classes) each class's accuracy, solid for the attributes and dashed for
  the control."""
  classes = result["class_names"]
  ks = list(range(result["max_attributes"] + 1))
  panels = 2 if len(classes) <= PER_CLASS_SHOWN else 1
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
  overall, styles = axes[0, 0], {"attributes": "-", "control": "--"}
  for arm, rows in result["arms"].items():
    overall.plot(ks, [r["evaluation_top1"] for r in rows], styles[arm], marker="o", label=arm)
  overall.axhline(result["chance"], color="grey", linestyle=":", label="chance")
  overall.set_title(f"top-1 on the {result['evaluation']['num_images']} evaluation images")
  if panels == 2:
    per_class, colours = axes[0, 1], plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
      for arm, rows in result["arms"].items():
        values = [r["evaluation_per_class"][name] for r in rows]
        per_class.plot(
          ks,
          [np.nan if v is None else v for v in values],
          styles[arm],
          color=colours(index),
          marker=".",
          label=name if arm == "attributes" else None,
        )
    per_class.set_title(
      "per class (dashed: control)" if "control" in result["arms"] else "per class"
    )
  for ax in axes[0]:
    ax.set_xticks(ks)
    ax.set_xlabel("k (attributes in the prompt)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
