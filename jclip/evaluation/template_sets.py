"""Zero-shot template sets compared: which set of prompt templates classifies best, chosen on some
images and reported on others.

A template sets file (JSON) names each set; each template has a '{}' where the class name goes,
as in --templates and zeroshot.DEFAULT_TEMPLATES:

  {"one": ["a photo of a {}."], "captions": ["a {} in the centre", "there is a {} , small"]}

Each set is scored as ZeroShotEvaluator scores its templates (every class written into every
template, the prompts of a class averaged), on the selection images and on the evaluation images
(prompt_scoring.py). The set with the highest accuracy on the selection images (ties: the first in
the file) is the one a user would pick, and its accuracy on the evaluation images is the honest
figure of that pick; the best evaluation figure of the table is not (it was picked on those images).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from jclip.errors import UserError  # noqa: E402
from jclip.evaluation.prompt_scoring import (  # noqa: E402
  ImageSet,
  PerClassColumns,
  PromptEmbeddings,
  zero_shot_scores,
)
from jclip.evaluation.zeroshot import check_templates, class_prompts  # noqa: E402


def load_template_sets(path: str) -> dict[str, list[str]]:
  """{set name: [template, ...]} from a JSON file (the module docstring), checked."""
  with open(path) as f:
    try:
      sets = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON: {e}.") from None
  if not isinstance(sets, dict) or len(sets) < 2:
    raise UserError(
      f"{path} must hold a JSON object of two or more named template sets, "
      '{"name": ["a photo of a {}.", ...], ...}.'
    )
  for name, templates in sets.items():
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
      raise UserError(
        f"{path}: set {name!r} must be a list of template strings, got {templates!r}."
      )
    check_templates(templates, f"set {name!r} in {path}")
  return sets


def compare_template_sets(
  template_sets: Mapping[str, Sequence[str]],
  class_names: Sequence[str],
  selection: ImageSet,
  evaluation: ImageSet,
  embed_texts: Callable[[list[str]], np.ndarray],
  scale: float,
) -> dict:
  """Every set's zero-shot top-1 on both sets of images and per-class accuracy on the evaluation
  images, as a JSON-able dict; "chosen" is the set that the selection images pick."""
  embed = PromptEmbeddings(embed_texts)
  prompts = {
    name: class_prompts(class_names, templates) for name, templates in template_sets.items()
  }
  embed.prepare([p for per_class in prompts.values() for ps in per_class for p in ps])
  rows = []
  for name, templates in template_sets.items():
    on_selection, on_evaluation = (
      zero_shot_scores(images, class_names, prompts[name], embed, scale)
      for images in (selection, evaluation)
    )
    rows.append(
      {
        "name": name,
        "templates": list(templates),
        "selection_top1": on_selection["top1"],
        "evaluation_top1": on_evaluation["top1"],
        "evaluation_per_class": on_evaluation["per_class"],
      }
    )
  chosen = max(rows, key=lambda row: row["selection_top1"])  # the first of equal ones
  return {
    "class_names": list(class_names),
    "chance": 1 / len(class_names),
    "selection": {"images": selection.description, "num_images": len(selection)},
    "evaluation": {"images": evaluation.description, "num_images": len(evaluation)},
    "sets": rows,
    "chosen": chosen["name"],
    "chosen_evaluation_top1": chosen["evaluation_top1"],
  }


def format_template_comparison(result: dict) -> str:
  """One line per set: its size, top-1 on both sets of images, per-class accuracy (evaluation);
  the set the selection images pick is marked."""
  classes, columns = result["class_names"], PerClassColumns(result["class_names"])
  name_width = max(4, *(len(row["name"]) for row in result["sets"]))
  lines = [
    f"Template sets, {len(classes)} classes, chance {result['chance']:.3f}:",
    f"  chosen on     {result['selection']['images']}",
    f"  reported on   {result['evaluation']['images']}",
    "",
    f"{'':{name_width + 15}}{'top-1 accuracy':^21}{columns.title}",
    f"  {'set':<{name_width}}  templates {'selection':>9}  {'evaluation':>10}{columns.header()}",
  ]
  for row in result["sets"]:
    lines.append(
      f"{'*' if row['name'] == result['chosen'] else ' '} {row['name']:<{name_width}}  "
      f"{len(row['templates']):9d} {row['selection_top1']:9.3f}  {row['evaluation_top1']:10.3f}"
      f"{columns.cells(row['evaluation_per_class'])}"
    )
  lines.append(
    f"* chosen on the selection images: {result['chosen']!r}, top-1 "
    f"{result['chosen_evaluation_top1']:.3f} on the evaluation images."
  )
  return "\n".join(lines)


def save_template_comparison_png(result: dict, path: str) -> None:
  """A bar per set: top-1 on the selection and on the evaluation images, with chance."""
  names = [row["name"] for row in result["sets"]]
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
  for offset, key in ((-0.2, "selection_top1"), (0.2, "evaluation_top1")):
    values = [row[key] for row in result["sets"]]
    ax.bar(x + offset, values, width=0.4, label=key.replace("_top1", " images"))
  ax.axhline(result["chance"], color="grey", linestyle=":", label="chance")
  labels = [f"{name} *" if name == result["chosen"] else name for name in names]
  ax.set_xticks(
    x, labels, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
  )
  ax.set_ylabel("zero-shot top-1")
  ax.set_ylim(0, 1)
  ax.set_title("template sets (* chosen on the selection images)", fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
