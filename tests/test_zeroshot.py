"""Zero-shot classification: prompts, template ensembling, logits and probabilities."""

import json

import numpy as np
import pytest

from jclip.evaluation.zeroshot import (
  DEFAULT_TEMPLATES,
  class_prompts,
  load_class_prompts,
  load_templates,
  softmax,
  zero_shot_logits,
  zero_shot_weights,
)


def _table_embedder(dim=8, seed=0):
  """embed_texts that gives every distinct string its own fixed random (not unit) vector."""
  rng, table = np.random.default_rng(seed), {}

  def embed_texts(texts):
    for text in texts:
      table.setdefault(text, rng.normal(size=dim) * rng.uniform(0.5, 3.0))
    return np.stack([table[text] for text in texts])

  return embed_texts


def test_class_prompts_fill_templates_and_take_per_class_lists():
  prompts = class_prompts(
    ["cat", "dog"],
    templates=["a {} here", "{} {{x}}"],
    per_class={"dog": ["a photo of a dog because of its fur"]},
  )
  assert prompts == [["a cat here", "cat {{x}}"], ["a photo of a dog because of its fur"]]
  assert class_prompts(["cat"])[0] == [t.replace("{}", "cat") for t in DEFAULT_TEMPLATES]


def test_class_prompts_rejects_unknown_class_and_template_without_placeholder():
  with pytest.raises(ValueError, match="'dgo'"):
    class_prompts(["cat", "dog"], per_class={"dgo": ["a dog"]})
  with pytest.raises(ValueError, match="Template 2"):
    class_prompts(["cat"], templates=["a {}", "a photo"])


def test_weights_are_ensembled_as_normalise_mean_normalise():
  embed = _table_embedder()
  prompts = [["a", "b", "c"], ["d"], ["e", "f"]]  # unequal counts: a slicing bug would show
  weights_CD = zero_shot_weights(embed, prompts)
  expected = []
  for class_list in prompts:
    emb = embed(class_list)
    mean = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).mean(axis=0)
    expected.append(mean / np.linalg.norm(mean))
  np.testing.assert_allclose(weights_CD, np.stack(expected), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(weights_CD, axis=1), 1.0, rtol=1e-5)


def test_a_long_prompt_vector_does_not_outvote_the_others():
  # Without per-prompt normalisation the long vector [100, 0] would dominate the class mean.
  table = {"p": np.array([100.0, 0.0]), "q": np.array([0.0, 1.0])}
  weights = zero_shot_weights(lambda texts: np.stack([table[t] for t in texts]), [["p", "q"]])
  np.testing.assert_allclose(weights[0], [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-5)


def test_matching_image_gets_the_highest_probability():
  vocabulary = ["cat", "dog", "car"]

  def bag_of_words(texts):  # one dimension per class word, plus one shared by every prompt
    return np.array([[text.count(w) for w in vocabulary] + [1.0] for text in texts], np.float32)

  weights = zero_shot_weights(bag_of_words, class_prompts(vocabulary))
  image_emb = np.array(
    [
      [0.0, 3.0, 0.0, 1.0],  # a dog
      [0.0, 0.0, 2.0, 1.0],
    ]
  )  # a car
  logits = zero_shot_logits(image_emb, weights, scale=100.0)
  probs = softmax(logits)
  np.testing.assert_array_equal(np.argmax(probs, axis=1), [1, 2])
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
  assert probs[0, 1] > 0.99
  # The logits are scale x cosine: the image is normalised, the weights are unit.
  cosine = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True) @ weights.T
  np.testing.assert_allclose(logits, 100.0 * cosine, rtol=1e-5)


def test_softmax_is_stable_for_large_logits():
  probs = softmax(np.array([[1000.0, 1000.0, 0.0]]))
  np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0]], atol=1e-12)


def test_logits_reject_mismatched_dimensions():
  with pytest.raises(ValueError, match="same D"):
    zero_shot_logits(np.ones((2, 4)), np.ones((3, 5)))


def test_weights_reject_a_class_without_prompts():
  with pytest.raises(ValueError, match="one prompt per class"):
    zero_shot_weights(_table_embedder(), [["a"], []])


def test_load_templates(tmp_path):
  path = tmp_path / "templates.txt"
  path.write_text("a photo of a {}.\n\n  a sketch of the {}  \n")
  assert load_templates(str(path)) == ["a photo of a {}.", "a sketch of the {}"]
  path.write_text("a photo of a {}.\na photo\n")
  with pytest.raises(ValueError, match="Template 2 .*'a photo'"):
    load_templates(str(path))
  path.write_text("\n \n")
  with pytest.raises(ValueError, match="no templates"):
    load_templates(str(path))


def test_load_class_prompts(tmp_path):
  path = tmp_path / "prompts.json"
  path.write_text(json.dumps({"dog": ["a photo of a dog because of its fur"], "cat": ["a cat"]}))
  assert load_class_prompts(str(path)) == {
    "dog": ["a photo of a dog because of its fur"],
    "cat": ["a cat"],
  }
  path.write_text(json.dumps({"dog": []}))
  with pytest.raises(ValueError, match="'dog'"):
    load_class_prompts(str(path))
  path.write_text(json.dumps(["a dog"]))
  with pytest.raises(ValueError, match="JSON object"):
    load_class_prompts(str(path))
