"""EfficientNet-Lite: its ImageNet weights against the reference PyTorch implementation, the
depthwise convolution against XLA's grouped one, and every way a state dict can be the wrong one."""

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from PIL import Image

from jclip.models import efficientnet_weights
from jclip.models.conv import DepthwiseConv
from jclip.models.efficientnet import EfficientNetLite, stages_of
from jclip.models.efficientnet_weights import WeightsError, expected_tensors, infer_variant
from jclip.models.pretrained import image_backbone_features, load_image_backbone
from jclip.pixels import normalize_images

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "efficientnet_lite0_reference.npz")
IMAGENET_DOGS = range(151, 269)  # ImageNet classes 151..268 are the dog breeds


def test_lite0_logits_and_features_match_the_reference_implementation(lite0_file):
  reference = np.load(FIXTURE)
  images = reference["images"]
  variant, variables = load_image_backbone(str(lite0_file), with_classifier=True)
  assert variant == "lite0"
  logits = EfficientNetLite("lite0", num_classes=1000).apply(variables, normalize_images(images))
  np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=0)
  features = image_backbone_features("efficientnet_lite0", images)
  assert features.dtype == np.float32 and features.shape == (len(images), 1280)
  np.testing.assert_allclose(features, reference["features"], atol=1e-4, rtol=0)


def test_lite0_names_dog_breeds_for_flickr_dog_photos(lite0_file, shared_data):
  """The input scaling the weights were trained with, (p - 127) / 128, is the one applied: with
  ImageNet's mean/std instead, fewer dog photos get a dog class (0.71 against 0.79 on these)."""
  root = os.path.join(shared_data, "flickr8k_4cat")
  with open(os.path.join(root, "captions.tsv"), newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  dogs = sorted({row["image"] for row in rows if row["category"] == "dog"})[:48]
  images = np.stack(
    [
      np.asarray(
        Image.open(os.path.join(root, "images", name))
        .convert("RGB")
        .resize((224, 224), Image.BICUBIC)
      )
      for name in dogs
    ]
  )
  _, variables = load_image_backbone(str(lite0_file), with_classifier=True)
  model = EfficientNetLite("lite0", num_classes=1000)
  top1 = np.asarray(jax.jit(model.apply)(variables, normalize_images(images))).argmax(-1)
  assert np.isin(top1, IMAGENET_DOGS).mean() >= 0.75


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (8, 3, 2), (9, 5, 2), (6, 5, 1)])
def test_depthwise_conv_equals_the_grouped_convolution_with_same_padding(size, kernel, stride):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 4)), jnp.float32)
  layer = DepthwiseConv(kernel, stride)
  variables = layer.init(jax.random.key(0), x)
  expected = lax.conv_general_dilated(
    x,
    variables["params"]["kernel"],
    (stride, stride),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=4,
  )
  np.testing.assert_allclose(layer.apply(variables, x), expected, atol=1e-5)


def test_lite_stages_keep_the_first_and_last_repeats_and_scale_the_rest():
  assert [s.repeats for s in stages_of("lite0")] == [1, 2, 2, 3, 3, 4, 1]
  assert [s.width for s in stages_of("lite0")] == [16, 24, 40, 80, 112, 192, 320]
  lite4 = stages_of("lite4")  # width x1.4, depth x1.8
  assert [s.repeats for s in lite4] == [1, 4, 4, 6, 6, 8, 1]
  assert [s.width for s in lite4] == [24, 32, 56, 112, 160, 272, 448]


def _random_state_dict(variant, seed=0):
  rng = np.random.default_rng(seed)
  return {
    name: rng.normal(size=shape).astype(np.float32)
    for name, (_, _, shape) in expected_tensors(variant, with_classifier=True).items()
  }


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_variant_is_told_by_the_tensors_and_every_tensor_lands_transposed(variant):
  state_dict = _random_state_dict(variant)
  assert infer_variant(state_dict, "f.pth") == variant
  variables = efficientnet_weights.efficientnet_variables(state_dict, variant, True, "f.pth")
  np.testing.assert_array_equal(
    variables["params"]["stem_conv"]["kernel"],
    state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0),
  )
  depthwise = state_dict["_blocks.3._depthwise_conv.weight"]
  np.testing.assert_array_equal(
    variables["params"]["block3"]["depthwise_conv"]["kernel"], depthwise.transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    variables["batch_stats"]["head_bn"]["var"], state_dict["_bn1.running_var"]
  )
  np.testing.assert_array_equal(
    variables["params"]["classifier"]["kernel"], state_dict["_fc.weight"].T
  )


def test_a_wrong_state_dict_names_each_missing_extra_and_misshaped_tensor():
  state_dict = _random_state_dict("lite0")
  del state_dict["_blocks.3._bn1.weight"]
  state_dict["_blocks.3._se_reduce.weight"] = np.zeros((4, 96, 1, 1), np.float32)
  state_dict["_conv_head.weight"] = np.zeros((1280, 300, 1, 1), np.float32)
  with pytest.raises(WeightsError) as error:
    efficientnet_weights.efficientnet_variables(state_dict, "lite0", False, "b0.pth")
  message = str(error.value)
  assert "b0.pth" in message
  assert "missing: _blocks.3._bn1.weight" in message
  assert "unexpected: _blocks.3._se_reduce.weight" in message
  assert "shape of _conv_head.weight: (1280, 300, 1, 1) in the file, (1280, 320, 1, 1)" in message


def test_a_state_dict_of_another_architecture_is_refused_by_name():
  other = {"encoder.layer.0.attention.self.query.weight": np.zeros((8, 8), np.float32)}
  with pytest.raises(WeightsError, match="bert.pth is not an EfficientNet-Lite state dict"):
    infer_variant(other, "bert.pth")


def test_image_backbone_features_rejects_float_or_tiny_images():
  with pytest.raises(ValueError, match="must be uint8"):
    image_backbone_features("efficientnet_lite0", np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match="too small"):
    image_backbone_features("efficientnet_lite0", np.zeros((1, 16, 16, 3), np.uint8))


def test_an_unknown_backbone_name_or_missing_file_says_what_is_accepted(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a packaged model"):
    load_image_backbone(str(tmp_path / "nothing.pth"))
