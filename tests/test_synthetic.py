"""The captioned-shapes default: deterministic, varied, four independent attributes."""

import numpy as np
import pytest

from jclip.data import synthetic
from jclip.data.synthetic import COMBINATIONS, CaptionedShapes


def test_at_least_four_attributes_and_200_combinations():
  attribute_sets = (synthetic.KINDS, synthetic.COLOURS, synthetic.SIZES, synthetic.POSITIONS)
  assert len(attribute_sets) >= 4
  assert len(COMBINATIONS) == np.prod([len(a) for a in attribute_sets]) >= 200


def test_examples_are_a_pure_function_of_seed_split_and_index():
  a, b = CaptionedShapes("train", 50, image_size=24, seed=3), CaptionedShapes("train", 50, 24, 3)
  for i in (0, 17, 49):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["captions"] == b[i]["captions"]
  other_seed = CaptionedShapes("train", 50, image_size=24, seed=4)
  assert any(not np.array_equal(a[i]["image"], other_seed[i]["image"]) for i in range(5))


def test_example_layout_and_captions_name_every_attribute():
  source = CaptionedShapes("train", 10, image_size=24)
  example = source[4]
  assert example["image"].shape == (24, 24, 3) and example["image"].dtype == np.uint8
  assert len(example["captions"]) == len(synthetic.TEMPLATES) >= 5
  assert len(set(example["captions"])) == len(example["captions"])  # several phrasings
  for caption in example["captions"]:
    for attribute in source.attributes(4):
      assert attribute in caption
  assert source.captions(4) == example["captions"]
  assert example["label"] == synthetic.KINDS.index(source.attributes(4)[0])


def test_the_shape_is_drawn_where_the_caption_says():
  source = CaptionedShapes("val", 350, image_size=32)
  for i in range(0, 350, 37):
    kind, colour, size, position = source.attributes(i)
    image = source[i]["image"].astype(float)
    row, col = (int(f * 32) for f in synthetic.POSITIONS[position])
    centre = image[row - 1 : row + 2, col - 1 : col + 2].mean(axis=(0, 1))
    if kind != "triangle":  # the triangle's centroid is below its box centre; skip the pixel test
      np.testing.assert_allclose(centre, synthetic.COLOURS[colour], atol=60)


def test_val_split_has_distinct_combinations_and_differs_from_train():
  val = CaptionedShapes("val", 350)
  combos = {val.attributes(i) for i in range(len(val))}
  assert len(combos) == 350
  train = CaptionedShapes("train", 350)
  assert [train.attributes(i) for i in range(20)] != [val.attributes(i) for i in range(20)]


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="split"):
    CaptionedShapes("test", 10)
  with pytest.raises(ValueError, match="num_val"):
    CaptionedShapes("val", 351)
  with pytest.raises(IndexError):
    CaptionedShapes("train", 3)[3]
