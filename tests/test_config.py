"""Config checks: a config that cannot work fails before training and names the field and fix."""

import importlib
import json
import os

import pytest

from jclip.config.checks import validate
from jclip.config.defaults import ConfigError, base, complete, text_tower, to_json_dict


def _message(config, num_devices=8):
  with pytest.raises(ConfigError) as error:
    validate(config, num_devices)
  return str(error.value)


def test_valid_config_passes(tiny_config):
  validate(tiny_config, 8)


def test_a_mistyped_field_is_named_with_the_closest_field(tiny_config):
  tiny_config.batch_sise = 64  # a config file's typo; on the command line the flag refuses it
  tiny_config.optim.warmup = 3
  message = _message(tiny_config)
  assert "batch_sise (did you mean batch_size?): no such field" in message
  assert "optim.warmup (did you mean optim.warmup_steps?)" in message


def test_one_embed_dim_sizes_both_towers(tiny_config):
  from jclip import tasks

  tiny_config.model.embed_dim = 24
  model = tasks.build_model(tiny_config)
  assert model.image_encoder.embed_dim == model.text_encoder.embed_dim == 24


def test_batch_not_divisible_by_devices(tiny_config):
  tiny_config.batch_size = 20
  assert "batch_size=20 does not split over 8 device(s)" in _message(tiny_config)


def test_accum_steps_must_be_a_whole_number_and_its_chunk_must_split_over_the_devices(tiny_config):
  """batch_size is the chunk that each of the accum_steps passes runs: it, not the step's
  accum_steps * batch_size pairs, must split evenly over the devices."""
  tiny_config.accum_steps = 0
  assert "accum_steps=0: use a whole number >= 1" in _message(tiny_config)
  tiny_config.accum_steps, tiny_config.batch_size = 4, 12  # 48 pairs, but chunks of 1.5 per device
  assert (
    "batch_size=12 (the chunk of each of the accum_steps=4 passes: every device runs "
    "batch_size / devices pairs at a time) does not split over 8 device(s): use a positive "
    "multiple of 8, e.g. --config.batch_size=8."
  ) in _message(tiny_config)
  tiny_config.batch_size = 8
  validate(tiny_config, 8)


def test_unknown_preset_and_norm_are_named_with_choices(tiny_config):
  tiny_config.model.text.preset = "bert-huge"
  tiny_config.model.image.norm = "instance"
  message = _message(tiny_config)
  assert (
    "model.text.preset='bert-huge'" in message and "'distilbert', 'minilm_l6', 'small'" in message
  )
  assert "model.image.norm='instance'" in message


def test_every_problem_is_reported_at_once(tiny_config):
  tiny_config.optim.warmup_steps = 100
  tiny_config.model.image.widths = (8, 12)
  tiny_config.data.max_text_len = 99
  message = _message(tiny_config)
  assert "optim.warmup_steps=100" in message
  assert "multiple of 8" in message
  assert "data.max_text_len=99" in message


def test_remat_must_be_a_bool(tiny_config):
  """A config file's or a stored config's model.remat (the command line's flag parser already
  refuses a non-bool)."""
  stored = to_json_dict(tiny_config)
  stored["model"]["remat"] = "yes"
  assert "model.remat='yes': use True" in _message(complete(stored))


def test_unknown_text_field_is_rejected():
  with pytest.raises(ConfigError, match="num_layer"):
    text_tower("small", num_layer=3)


def test_wordpiece_needs_a_pretrained_text_tower(tiny_config):
  tiny_config.tokenizer.kind = "wordpiece"
  assert "--config.init.text_pretrained=minilm_l6" in _message(tiny_config)


def test_pretrained_text_tower_needs_its_wordpiece_vocabulary(tiny_config):
  tiny_config.init.update(text_pretrained="minilm_l6", text_classifier_workdir="/tmp/txt")
  message = _message(tiny_config)
  assert "--config.tokenizer.kind=wordpiece" in message
  assert "set only one" in message


def test_negative_text_backbone_learning_rate_and_unknown_tokenizer(tiny_config):
  tiny_config.optim.text_backbone_lr_scale = -0.1
  tiny_config.tokenizer.kind = "bpe"
  message = _message(tiny_config)
  assert "optim.text_backbone_lr_scale=-0.1" in message
  assert "tokenizer.kind='bpe'" in message


def test_minilm_configs_are_valid_and_differ_only_in_training():
  from configs import flickr8k_minilm  # conftest puts the repository root on the path

  frozen, finetune = flickr8k_minilm.get_config("frozen"), flickr8k_minilm.get_config("finetune")
  validate(frozen, 1)
  validate(finetune, 1)
  assert frozen.optim.text_backbone_lr_scale == 0.0 < finetune.optim.text_backbone_lr_scale < 1
  with pytest.raises(
    ConfigError,
    match=r"^configs/flickr8k_minilm.py:thawed is not a variant of "
    r"configs/flickr8k_minilm.py: use one of finetune, "
    r"frozen \(e.g.",
  ):
    flickr8k_minilm.get_config("thawed")


@pytest.mark.parametrize(
  "name,variant",
  [
    ("flickr8k_lit", "frozen"),
    ("flickr8k_lit", "scratch"),
    ("flickr8k_lit", "finetune"),
    ("flickr4_clip", "lit"),
  ],
)
def test_lit_configs_are_valid_and_cache_only_locked_towers(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  validate(config, 1)
  assert config.optim.image_backbone_lr_scale == 0.0 and config.model.image.locked
  assert config.data.cached_views >= 1
  # Caption features are cached exactly when the text tower is locked.
  assert config.data.cached_text == (config.optim.text_backbone_lr_scale == 0.0)


def test_cached_text_needs_a_locked_text_tower_without_dropout(tiny_config):
  tiny_config.data.cached_text = True
  message = _message(tiny_config)
  assert "data.cached_text=True caches a locked text tower's features" in message
  assert "optim.text_backbone_lr_scale=0" in message and "model.text.dropout_rate=0" in message


def test_captions_per_image_must_be_positive_and_only_for_clip(tiny_config):
  tiny_config.data.captions_per_image = 0
  assert "data.captions_per_image=0: use 1, or more than 1 for task 'clip' only" in _message(
    tiny_config
  )
  tiny_config.data.captions_per_image = 3
  validate(tiny_config, 1)
  tiny_config.task, tiny_config.model.num_classes = "text_classifier", 4
  assert "data.captions_per_image=3" in _message(tiny_config)


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def test_flickr8k_recipe_changes_only_the_studied_fields_of_the_shared_base():
  """configs/flickr8k.py is the study's recipe; the configs that build on flickr8k.base_config()
  keep the towers their figures were measured with."""
  from configs import flickr8k

  recipe, base = flickr8k.get_config(), flickr8k.base_config()
  validate(recipe, 1)
  validate(base, 1)
  recipe_fields, base_fields = _flat(recipe.to_dict()), _flat(base.to_dict())
  assert recipe_fields.keys() == base_fields.keys()
  changed = {k for k in recipe_fields if recipe_fields[k] != base_fields[k]}
  assert changed == {
    "num_steps",
    "data.image_size",
    "model.image.stem_stride",
    "data.captions_per_image",
    "model.text.num_layers",
    "model.text.mlp_dim",
  }


def test_siglip_quickstart_is_valid_and_differs_only_in_the_loss():
  from configs import quickstart, quickstart_siglip

  siglip, softmax = quickstart_siglip.get_config(), quickstart.get_config()
  validate(siglip, 8)
  siglip_fields, softmax_fields = _flat(siglip.to_dict()), _flat(softmax.to_dict())
  changed = {
    k
    for k in siglip_fields.keys() | softmax_fields.keys()
    if siglip_fields.get(k) != softmax_fields.get(k)
  }
  assert changed == {"loss", "model.init_temperature", "model.init_logit_bias"}
  assert (siglip.model.init_temperature, siglip.model.init_logit_bias) == (0.1, -10.0)


def test_unknown_loss_is_named_with_the_choices(tiny_config):
  tiny_config.loss = "hinge"
  assert "loss='hinge': use one of ('clip', 'siglip')" in _message(tiny_config)


def test_siglip_refuses_the_softmax_losss_options_and_the_reverse(tiny_config):
  tiny_config.loss = "siglip"
  validate(tiny_config, 8)
  tiny_config.data.captions_per_image = 2  # the softmax loss's several right captions
  assert (
    "data.captions_per_image=2 is the softmax loss's multi-caption option; the sigmoid loss "
    "takes one caption per image: set --config.data.captions_per_image=1, or "
    "--config.loss=clip."
  ) in _message(tiny_config)
  tiny_config.data.captions_per_image = 1
  tiny_config.task, tiny_config.model.num_classes = "image_classifier", 4
  assert "loss='siglip' scores image-text pairs, but task='image_classifier'" in _message(
    tiny_config
  )

  tiny_config.task, tiny_config.loss = "clip", "clip"
  tiny_config.model.init_logit_bias = -10.0  # SigLIP's bias, with the softmax loss
  assert (
    "model.init_logit_bias=-10.0 is the sigmoid loss's bias, which loss='clip' has not: set "
    "--config.loss=siglip"
  ) in _message(tiny_config)


# Every config file of 2026-11 (before one base held the defaults), as its run stored it.
OLD_CONFIGS = os.path.join(os.path.dirname(__file__), "fixtures", "configs_2026_11")
# The config file and variant of today that each stored one was made by (lit's variants were
# renamed to the names that configs/flickr8k_minilm.py uses).
OLD_NAMES = {
  "flickr8k_lit_minilm_frozen": ("flickr8k_lit", "frozen"),
  "flickr8k_lit_minilm_finetune": ("flickr8k_lit", "finetune"),
}
# What a config file changed on purpose since, as the overrides that give its 2026-11 run: the LiT
# Flickr8k configs' backbone went from Lite0 to Lite2, their shared space from 256 to 1024
# (docs/lit_study.md).
CHANGED_SINCE = {
  "flickr8k_lit": {
    "init.image_pretrained": "efficientnet_lite0",
    "model.image.variant": "lite0",
    "data.image_size": 224,
    "model.embed_dim": 256,
  }
}


def _todays_config(stored_name: str):
  name, variant = OLD_NAMES.get(stored_name, (stored_name, None))
  module = None
  while module is None:  # "flickr4_clip_lit" -> configs.flickr4_clip, variant "lit"
    try:
      module = importlib.import_module(f"configs.{name}")
    except ModuleNotFoundError:
      name, _, last = name.rpartition("_")
      variant = last if variant is None else f"{last}_{variant}"
  config = module.get_config() if variant is None else module.get_config(variant)
  config.update_from_flattened_dict(CHANGED_SINCE.get(name, {}))
  return config


@pytest.mark.parametrize("stored_name", sorted(f[:-5] for f in os.listdir(OLD_CONFIGS)))
def test_a_stored_config_of_2026_11_completes_to_todays_config_file(stored_name):
  """The stored configs lack the fields added since (init, data.cached_views, ...) and hold
  model.image.embed_dim and model.text.embed_dim: completed, each equals the config that today's
  file makes, so an old run resumes (checkpoint.check_compatible) and today's files describe the
  same runs as before."""
  with open(os.path.join(OLD_CONFIGS, f"{stored_name}.json")) as f:
    stored = json.load(f)
  todays = _todays_config(stored_name)
  assert to_json_dict(complete(stored)) == to_json_dict(todays)
  assert to_json_dict(complete(todays)) == to_json_dict(todays)  # completing twice changes nothing


def test_completion_fills_only_what_a_config_lacks():
  stored = to_json_dict(base())
  del stored["accum_steps"], stored["model"]["text"]["num_layers"], stored["evals"]["zeroshot"]
  stored["evals"]["val"] = {"type": "retrieval", "every": 7}
  stored["model"]["image"] = {"tower": "efficientnet_lite", "locked": True}
  completed = complete(stored)
  assert completed.accum_steps == 1  # the default: what its absence meant
  assert completed.model.text.num_layers is None  # a text field left out: the preset's value
  assert sorted(completed.evals) == ["val"]  # evaluators are not added...
  assert (completed.evals.val.every, completed.evals.val.split) == (7, "val")  # ...but completed
  image = completed.model.image  # the section of its own tower: the CNN's fields are None
  assert (image.variant, image.locked, image.widths) == ("lite0", True, None)


def test_an_unknown_block_and_a_map_that_inverted_blocks_cannot_halve_are_named(tiny_config):
  tiny_config.model.image.block = "dense"
  assert "model.image.block='dense': use one of ('residual', 'inverted')" in _message(tiny_config)
  # 16 px, a stride-2 conv stem: an 8x8 map, halved once for two stages, but not 4 times for five.
  tiny_config.model.image.update(block="inverted", widths=(8, 16), depths=(1, 1))
  validate(tiny_config, 1)
  tiny_config.model.image.update(widths=(8,) * 5, depths=(1,) * 5)
  assert "gives a map of 8x8, which model.image.block='inverted' cannot halve 4 time(s)" in (
    _message(tiny_config)
  )
