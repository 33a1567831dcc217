"""Prompt studies and template sets on embeddings made by hand (no model): the search picks the
planted attribute, chooses on the selection images only and reports the evaluation images' figure,
k = 0 is plain zero-shot, the control draws by its seed, each prompt is embedded once, and a bad
study file is named in one line."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from jclip.data.synthetic import KINDS
from jclip.errors import UserError
from jclip.evaluation.classification_metrics import classification_metrics
from jclip.evaluation.prompt_scoring import ImageSet, selection_and_evaluation, zero_shot_scores
from jclip.evaluation.prompt_study import (
  check_study,
  control_candidates,
  english_list,
  format_prompt_study,
  load_prompt_study,
  prompt_study_from_dict,
  replaced_column_scores,
  run_prompt_study,
  save_prompt_study_png,
  write_prompt,
)
from jclip.evaluation.template_sets import (
  compare_template_sets,
  format_template_comparison,
  load_template_sets,
  save_template_comparison_png,
)
from jclip.evaluation.zeroshot import (
  DEFAULT_TEMPLATES,
  class_prompts,
  zero_shot_logits,
  zero_shot_weights,
)

CLASSES = ["cat", "dog", "bird"]
PLANTED = {"cat": "whiskers", "dog": "bark", "bird": "wings"}
CANDIDATES = ["fur", "whiskers", "bark", "wings", "tail"]
CONTROL = ["table", "river", "music", "cloud", "bread", "pencil"]
WEATHER = [f"{weather}{name}" for weather in ("sunny", "rainy", "plain") for name in CLASSES]
# The words of the tests, each its own axis of the embedding space: exactly orthogonal.
VOCABULARY = ["a", "with", "and", "everything", *CLASSES, *CANDIDATES, *CONTROL, *WEATHER]
D = len(VOCABULARY) + 4
SCALE = 10.0


def word_vector(word: str) -> np.ndarray:
  return np.eye(D)[VOCABULARY.index(word)]


def bag_of_words(texts):
  """A text tower made by hand: a text's embedding is the sum of its words' directions."""
  return np.stack([sum(word_vector(w) for w in re.findall(r"[^\s,.]+", t)) for t in texts])


def images_of(per_class_words: dict, count: int, seed: int, description: str) -> ImageSet:
  """`count` images per class: a little of the class's direction, the weighted directions of its
  words ({class: {word: weight}}) and noise (the class name alone classifies some of them
  wrongly); unit rows."""
  rng = np.random.default_rng(seed)
  labels_N = np.repeat(np.arange(len(CLASSES)), count)
  rows = []
  for label in labels_N:
    name = CLASSES[label]
    words = per_class_words[name].items()
    vector = 0.3 * word_vector(name) + sum(w * word_vector(x) for x, w in words)
    rows.append(vector + rng.normal(size=D) * 0.3)
  emb_ND = np.stack(rows)
  return ImageSet(description, emb_ND / np.linalg.norm(emb_ND, axis=1, keepdims=True), labels_N)


def study(**changes):
  data = {
    "template": "a {} with {attributes}",
    "base_template": "a {}",
    "attributes": {name: list(CANDIDATES) for name in CLASSES},
    "control_words": list(CONTROL),
    **changes,
  }
  return prompt_study_from_dict(data, "study.json")


PLANTED_IMAGES = {name: {PLANTED[name]: 1.5} for name in CLASSES}


def test_write_prompt_fills_each_placeholder_once():
  assert [english_list(["a"]), english_list(["a", "b"]), english_list(["a", "b", "c"])] == [
    "a",
    "a and b",
    "a, b and c",
  ]
  # A placeholder inside a class name or an attribute is text, not a place to fill.
  assert write_prompt("a {} with {attributes}.", "cat", ["fur", "{}", "a tail"]) == (
    "a cat with fur, {} and a tail."
  )
  assert write_prompt("a {}", "x{attributes}", []) == "a x{attributes}"


def test_replaced_column_scores_equal_argmax_and_log_softmax_of_the_replaced_logits():
  rng = np.random.default_rng(0)
  # Small integers: many ties, which np.argmax breaks towards the lower class index.
  logits_NC = rng.integers(0, 3, size=(200, 4)).astype(np.float64)
  labels_N = rng.integers(0, 4, size=200)
  column_NA = rng.integers(0, 3, size=(200, 5)).astype(np.float64)
  for c in range(4):
    accuracy_A, log_prob_A = replaced_column_scores(logits_NC, labels_N, c, column_NA)
    for a in range(5):
      replaced_NC = logits_NC.copy()
      replaced_NC[:, c] = column_NA[:, a]
      assert accuracy_A[a] == np.mean(np.argmax(replaced_NC, axis=1) == labels_N)
      log_softmax_NC = replaced_NC - np.log(np.exp(replaced_NC).sum(axis=1, keepdims=True))
      assert log_prob_A[a] == pytest.approx(np.mean(log_softmax_NC[np.arange(200), labels_N]))


def test_the_search_picks_the_planted_attribute_of_each_class():
  selection = images_of(PLANTED_IMAGES, 20, seed=1, description="selection")
  evaluation = images_of(PLANTED_IMAGES, 20, seed=2, description="evaluation")
  result = run_prompt_study(study(), CLASSES, selection, evaluation, bag_of_words, SCALE, 2)
  rows = result["arms"]["attributes"]
  assert rows[1]["attributes"] == {name: [PLANTED[name]] for name in CLASSES}
  assert rows[1]["prompts"]["cat"] == "a cat with whiskers"
  assert [len(words) for words in rows[2]["attributes"].values()] == [2, 2, 2]
  assert all(rows[2]["attributes"][name][0] == PLANTED[name] for name in CLASSES)
  assert rows[1]["evaluation_top1"] > rows[0]["evaluation_top1"]


def test_a_word_that_draws_every_image_to_its_class_is_not_chosen():
  # "everything" lies in every image: in a class's prompt it wins that class all of its images
  # (its own accuracy 1) and takes the other classes' images too.
  words = {name: {PLANTED[name]: 0.8, "everything": 1.5} for name in CLASSES}
  the_study = study(attributes={n: ["everything", PLANTED[n], "fur"] for n in CLASSES})
  selection, evaluation = images_of(words, 20, 1, "s"), images_of(words, 20, 2, "e")
  result = run_prompt_study(the_study, CLASSES, selection, evaluation, bag_of_words, SCALE, 1)
  assert result["arms"]["attributes"][1]["attributes"] == {n: [PLANTED[n]] for n in CLASSES}


def test_the_choice_is_made_on_the_selection_images_and_scored_on_the_evaluation_images():
  # Selection images carry "sunny"; evaluation images carry "rainy" and the opposite of "sunny":
  # the selection's best word is the evaluation's worst.
  words = {name: [f"sunny{name}", f"rainy{name}", f"plain{name}"] for name in CLASSES}
  the_study = study(attributes=words, control_words=None)
  selection = images_of({n: {f"sunny{n}": 1.5} for n in CLASSES}, 20, 1, "selection")
  evaluation = images_of({n: {f"rainy{n}": 1.5, f"sunny{n}": -1.5} for n in CLASSES}, 20, 2, "ev")
  result = run_prompt_study(the_study, CLASSES, selection, evaluation, bag_of_words, SCALE, 1)
  row = result["arms"]["attributes"][1]
  assert row["attributes"] == {name: [f"sunny{name}"] for name in CLASSES}

  def scored(images, word):
    prompts = [[f"a {name} with {word}{name}"] for name in CLASSES]
    return zero_shot_scores(images, CLASSES, prompts, bag_of_words, SCALE)

  assert row["evaluation_top1"] == scored(evaluation, "sunny")["top1"]
  assert row["evaluation_per_class"] == scored(evaluation, "sunny")["per_class"]
  assert row["selection_top1"] == scored(selection, "sunny")["top1"]
  # Choosing on the evaluation images would have picked "rainy" and reported more.
  assert scored(evaluation, "rainy")["top1"] > row["evaluation_top1"] + 0.3


def test_other_evaluation_images_change_the_figures_but_not_the_choices():
  selection = images_of(PLANTED_IMAGES, 15, 1, "selection")
  results = [
    run_prompt_study(study(), CLASSES, selection, evaluation, bag_of_words, SCALE, 3)
    for evaluation in (
      images_of(PLANTED_IMAGES, 15, 2, "one"),
      images_of({n: {"tail": 2.0} for n in CLASSES}, 10, 3, "another"),
    )
  ]
  chosen = [
    [[row["attributes"] for row in rows] for rows in result["arms"].values()] for result in results
  ]
  figures = [[row["evaluation_top1"] for row in r["arms"]["attributes"]] for r in results]
  assert chosen[0] == chosen[1] and figures[0] != figures[1]


def test_k0_is_plain_zero_shot_with_the_base_template():
  selection = images_of(PLANTED_IMAGES, 10, 1, "selection")
  evaluation = images_of({n: {"tail": 1.0} for n in CLASSES}, 12, 2, "evaluation")
  result = run_prompt_study(study(), CLASSES, selection, evaluation, bag_of_words, SCALE, 1)
  weights_CD = zero_shot_weights(bag_of_words, class_prompts(CLASSES, ["a {}"]))
  plain = classification_metrics(
    evaluation.labels_N, CLASSES, zero_shot_logits(evaluation.image_emb_ND, weights_CD, SCALE)
  )
  for arm in ("attributes", "control"):
    row = result["arms"][arm][0]
    assert row["attributes"] == {name: [] for name in CLASSES}
    assert [[p] for p in row["prompts"].values()] == class_prompts(CLASSES, ["a {}"])
    assert row["evaluation_top1"] == plain["top1_accuracy"]
    assert row["evaluation_per_class"] == {r["class"]: r["recall"] for r in plain["per_class"]}


def test_the_control_draws_its_words_by_the_seed_and_is_searched_among_them():
  the_study = study(attributes={"cat": CANDIDATES, "dog": CANDIDATES[:3], "bird": CANDIDATES})
  draws = {seed: control_candidates(the_study, CLASSES, seed) for seed in (0, 0, 1)}
  assert control_candidates(the_study, CLASSES, 0) == draws[0]
  assert draws[1] != draws[0]
  for words, name in zip(draws[0], CLASSES, strict=True):
    assert len(words) == len(set(words)) == len(the_study.attributes[name])
    assert set(words) <= set(CONTROL)
  images = images_of(PLANTED_IMAGES, 8, 1, "images")
  selection, evaluation = selection_and_evaluation(images, 0.5, seed=0)
  result = run_prompt_study(
    the_study, CLASSES, selection, evaluation, bag_of_words, SCALE, 2, seed=1
  )
  assert result["candidates"]["control"] == dict(zip(CLASSES, draws[1], strict=True))
  for name in CLASSES:
    assert set(result["arms"]["control"][2]["attributes"][name]) <= set(
      result["candidates"]["control"][name]
    )


def test_each_distinct_prompt_is_embedded_once():
  embedded = []

  def counting(texts):
    embedded.extend(texts)
    return bag_of_words(texts)

  selection = images_of(PLANTED_IMAGES, 10, 1, "selection")
  evaluation = images_of(PLANTED_IMAGES, 10, 2, "evaluation")
  result = run_prompt_study(study(), CLASSES, selection, evaluation, counting, SCALE, 3)
  assert len(embedded) == len(set(embedded)) == result["prompts_embedded"]
  assert "a cat with whiskers" in embedded


def test_selection_and_evaluation_cut_each_class_with_the_seed():
  labels_N = np.repeat(np.arange(4), [10, 7, 2, 1])
  images = ImageSet("split", np.eye(20)[: len(labels_N)], labels_N)
  selection, evaluation = selection_and_evaluation(images, 0.3, seed=0)
  # 30% of each class, at least one image on each side when there are two: 3, 2, 1 and 0.
  assert np.bincount(selection.labels_N, minlength=4).tolist() == [3, 2, 1, 0]
  assert np.bincount(evaluation.labels_N, minlength=4).tolist() == [7, 5, 1, 1]
  rows = lambda s: {tuple(r) for r in s.image_emb_ND}  # noqa: E731
  assert not rows(selection) & rows(evaluation)
  assert len(rows(selection) | rows(evaluation)) == len(labels_N)
  again, _ = selection_and_evaluation(images, 0.3, seed=0)
  other, _ = selection_and_evaluation(images, 0.3, seed=1)
  assert rows(again) == rows(selection) != rows(other)
  assert "of split, seed 0" in selection.description
  with pytest.raises(UserError, match="selection_fraction=1"):
    selection_and_evaluation(images, 1.0, seed=0)


def _user_error(call) -> str:
  with pytest.raises(UserError) as error:
    call()
  assert "\n" not in str(error.value)
  return str(error.value)


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"templates": "a {}"}, "study.json: unknown key(s) ['templates']"),
    ({"template": "a {} and more"}, "has no '{attributes}'"),
    ({"template": "a photo with {attributes}"}, "template in study.json, 'a photo with"),
    ({"base_template": "a {} {attributes}"}, "base_template 'a {} {attributes}'"),
    ({"attributes": ["fur"]}, "attributes must be a JSON object"),
    ({"attributes": {"cat": "fur"}}, "attributes of class 'cat' must be a non-empty list"),
    ({"attributes": {"cat": ["fur", " "]}}, "attributes of class 'cat' holds ' '"),
    ({"attributes": {"dog": ["fur", "tail", "fur"]}}, "class 'dog' lists ['fur'] more than once"),
    ({"control_words": []}, "control_words must be a non-empty list"),
  ],
)
def test_a_bad_study_file_is_named_in_one_line(changes, message):
  assert message in _user_error(lambda: study(**changes))


def test_a_study_that_does_not_fit_the_images_is_named_in_one_line(tmp_path):
  assert "missing key(s) ['attributes']" in _user_error(
    lambda: prompt_study_from_dict({"template": "a {} {attributes}"}, "s.json")
  )
  (tmp_path / "bad.json").write_text('{"template": ')
  assert "bad.json is not valid JSON" in _user_error(
    lambda: load_prompt_study(str(tmp_path / "bad.json"))
  )
  attributes = {"cat": CANDIDATES, "dog": CANDIDATES[:2], "cow": CANDIDATES}
  assert "lack the class(es) ['bird']" in _user_error(
    lambda: check_study(study(attributes=attributes), CLASSES, 1)
  )
  attributes["bird"] = attributes.pop("cow")
  assert "class 'dog' has 2 attribute(s), fewer than --max_attributes=3" in _user_error(
    lambda: check_study(study(attributes=attributes), CLASSES, 3)
  )
  assert "control_words has 3 word(s), fewer than the 5 candidates" in _user_error(
    lambda: check_study(study(control_words=CONTROL[:3]), CLASSES, 2)
  )
  more = {**{name: CANDIDATES for name in CLASSES}, "cow": CANDIDATES}
  assert "unknown class(es) ['cow']" in _user_error(
    lambda: check_study(study(attributes=more), CLASSES, 1)
  )


def test_the_docs_study_and_template_sets_fit_the_shapes():
  docs = os.path.join(ROOT, "docs")
  shapes = load_prompt_study(os.path.join(docs, "prompt_study_shapes.json"))
  check_study(shapes, list(KINDS), 3)
  assert shapes.control_words is not None
  sets = load_template_sets(os.path.join(docs, "template_sets_shapes.json"))
  assert sets["default"] == list(DEFAULT_TEMPLATES)


def test_the_table_and_png_show_the_evaluation_figures(tmp_path):
  selection = images_of(PLANTED_IMAGES, 10, 1, "the selection images")
  evaluation = images_of(PLANTED_IMAGES, 10, 2, "the evaluation images")
  result = run_prompt_study(study(), CLASSES, selection, evaluation, bag_of_words, SCALE, 2)
  table = format_prompt_study(result)
  assert "chosen on     the selection images" in table
  assert "reported on   the evaluation images" in table
  for k in range(3):
    for arm in ("attributes", "control") if k else ("base",):
      row = result["arms"]["attributes" if arm == "base" else arm][k]
      cells = [f"{row['evaluation_per_class'][name]:.3f}" for name in CLASSES]
      line = f"{k}  {arm} +{row['selection_top1']:.3f} +{row['evaluation_top1']:.3f} +"
      assert re.search(line + " +".join(cells), table), (line, table)
  final = result["arms"]["attributes"][2]["attributes"]["cat"]
  assert f"cat   attributes: {', '.join(final)}   control: " in table
  save_prompt_study_png(result, str(tmp_path / "study.png"))
  assert json.loads(json.dumps(result)) == result  # the JSON that eval.py writes
  with Image.open(tmp_path / "study.png") as image:
    assert image.format == "PNG" and image.size[0] > 600


def test_template_sets_are_chosen_on_the_selection_images_and_scored_on_the_others(tmp_path):
  # A text tower made by hand where set "u" matches the selection images and set "v" the
  # evaluation images: each prompt is its own axis, and an image of a class lies on the axis of
  # its set's prompt of that class. Set "w" matches no image (every logit 0: all predicted class 0).
  texts = [f"{s} {name}" for s in ("u", "v", "w") for name in CLASSES]
  directions = dict(zip(texts, np.eye(len(texts)), strict=True))
  lookup = lambda texts: np.stack([directions[t] for t in texts])  # noqa: E731

  def images(template, description):
    emb_ND = np.stack([directions[template.replace("{}", n)] for n in CLASSES for _ in range(4)])
    return ImageSet(description, emb_ND, np.repeat(np.arange(3), 4))

  sets = {"w": ["w {}"], "u": ["u {}"], "v": ["v {}"]}
  selection, evaluation = images("u {}", "selection"), images("v {}", "evaluation")
  result = compare_template_sets(sets, CLASSES, selection, evaluation, lookup, SCALE)
  rows = {row["name"]: row for row in result["sets"]}
  for name, templates in sets.items():
    prompts = class_prompts(CLASSES, templates)
    for images_, key in ((selection, "selection_top1"), (evaluation, "evaluation_top1")):
      assert rows[name][key] == zero_shot_scores(images_, CLASSES, prompts, lookup, SCALE)["top1"]
  assert rows["u"]["selection_top1"] == rows["v"]["evaluation_top1"] == 1.0
  assert result["chosen"] == "u"
  assert result["chosen_evaluation_top1"] == rows["u"]["evaluation_top1"] == 1 / 3
  table = format_template_comparison(result)
  assert "* u " in table and f"top-1 {rows['u']['evaluation_top1']:.3f} on the evaluation" in table
  save_template_comparison_png(result, str(tmp_path / "sets.png"))
  with Image.open(tmp_path / "sets.png") as image:
    assert image.format == "PNG"


@pytest.mark.parametrize(
  ("content", "message"),
  [
    ("[]", "two or more named template sets"),
    ('{"a": ["a {}"]}', "two or more named template sets"),
    ('{"a": ["a {}"], "b": "b {}"}', "set 'b' must be a list of template strings"),
    ('{"a": ["a {}"], "b": ["b"]}', "Template 1 of set 'b' in"),
    ('{"a": ["a {}"], "b": []}', "set 'b' in"),
  ],
)
def test_a_bad_template_sets_file_is_named_in_one_line(tmp_path, content, message):
  path = tmp_path / "sets.json"
  path.write_text(content)
  assert message in _user_error(lambda: load_template_sets(str(path)))
