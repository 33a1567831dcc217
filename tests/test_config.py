"""Config checks: a config that cannot work fails before training and names the field and fix."""

import pytest

from jclip.config import ConfigError, text_tower_config, validate


def _message(config, num_devices=8):
  with pytest.raises(ConfigError) as error:
    validate(config, num_devices)
  return str(error.value)


def test_valid_config_passes(tiny_config):
  validate(tiny_config, 8)


def test_embedding_sizes_of_the_towers_must_agree(tiny_config):
  tiny_config.model.text = text_tower_config("small", 32)  # a config file that forgot the link
  assert "model.image.embed_dim=16 and model.text.embed_dim=32" in _message(tiny_config)


def test_linked_embed_dim_changes_both_towers(tiny_config):
  tiny_config.model.embed_dim = 24
  assert tiny_config.model.image.embed_dim == tiny_config.model.text.embed_dim == 24


def test_batch_not_divisible_by_devices(tiny_config):
  tiny_config.batch_size = 20
  assert "batch_size=20 does not split over 8 device(s)" in _message(tiny_config)


def test_accum_steps_must_be_a_whole_number_and_its_chunk_must_split_over_the_devices(
    tiny_config):
  """batch_size is the chunk that each of the accum_steps passes runs: it, not the step's
  accum_steps * batch_size pairs, must split evenly over the devices."""
  tiny_config.accum_steps = 0
  assert "accum_steps=0: use a whole number >= 1" in _message(tiny_config)
  tiny_config.accum_steps, tiny_config.batch_size = 4, 12  # 48 pairs, but chunks of 1.5 per device
  assert ("batch_size=12 (the chunk of each of the accum_steps=4 passes: every device runs "
          "batch_size / devices pairs at a time) does not split over 8 device(s): use a positive "
          "multiple of 8, e.g. --config.batch_size=8.") in _message(tiny_config)
  tiny_config.batch_size = 8
  validate(tiny_config, 8)


def test_unknown_preset_and_norm_are_named_with_choices(tiny_config):
  tiny_config.model.text.preset = "bert-huge"
  tiny_config.model.image.norm = "instance"
  message = _message(tiny_config)
  assert "model.text.preset='bert-huge'" in message and "'distilbert', 'minilm_l6', 'small'" in message
  assert "model.image.norm='instance'" in message


def test_every_problem_is_reported_at_once(tiny_config):
  tiny_config.optim.warmup_steps = 100
  tiny_config.model.image.widths = (8, 12)
  tiny_config.data.max_text_len = 99
  message = _message(tiny_config)
  assert "optim.warmup_steps=100" in message
  assert "multiple of 8" in message
  assert "data.max_text_len=99" in message


def test_unknown_text_field_is_rejected():
  with pytest.raises(ConfigError, match="num_layer"):
    text_tower_config("small", 16, num_layer=3)


def test_wordpiece_needs_a_pretrained_text_tower(tiny_config):
  tiny_config.tokenizer.kind = "wordpiece"
  assert "--config.init.text_pretrained=minilm_l6" in _message(tiny_config)


def test_pretrained_text_tower_needs_its_wordpiece_vocabulary(tiny_config):
  tiny_config.init = dict(text_pretrained="minilm_l6", text_classifier_workdir="/tmp/txt")
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
  with pytest.raises(ValueError, match="one of \\[.finetune., .frozen.\\]"):
    flickr8k_minilm.get_config("thawed")


@pytest.mark.parametrize("name,variant", [("flickr8k_lit", "minilm_frozen"),
                                          ("flickr8k_lit", "scratch"),
                                          ("flickr8k_lit", "minilm_finetune"),
                                          ("flickr4_clip", "lit")])
def test_lit_configs_are_valid_and_cache_only_locked_towers(name, variant):
  import importlib

  config = importlib.import_module(f"configs.{name}").get_config(variant)
  validate(config, 1)
  assert config.optim.image_backbone_lr_scale == 0.0 and config.model.image.locked
  assert config.data.cached_views >= 1
  # Caption features are cached exactly when the text tower is locked.
  assert config.data.get("cached_text", False) == (config.optim.text_backbone_lr_scale == 0.0)


def test_cached_text_needs_a_locked_text_tower_without_dropout(tiny_config):
  tiny_config.data.cached_text = True
  message = _message(tiny_config)
  assert "data.cached_text=True caches a locked text tower's features" in message
  assert "optim.text_backbone_lr_scale=0" in message and "model.text.dropout_rate=0" in message


def test_captions_per_image_must_be_positive_and_only_for_clip(tiny_config):
  tiny_config.data.captions_per_image = 0
  assert "data.captions_per_image=0: use 1, or more than 1 for task 'clip' only" in _message(
      tiny_config)
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
  assert changed == {"num_steps", "data.image_size", "model.image.stem_stride",
                     "data.captions_per_image", "model.text.num_layers", "model.text.mlp_dim"}


def test_siglip_quickstart_is_valid_and_differs_only_in_the_loss():
  from configs import quickstart, quickstart_siglip

  siglip, softmax = quickstart_siglip.get_config(), quickstart.get_config()
  validate(siglip, 8)
  siglip_fields, softmax_fields = _flat(siglip.to_dict()), _flat(softmax.to_dict())
  changed = {k for k in siglip_fields.keys() | softmax_fields.keys()
             if siglip_fields.get(k) != softmax_fields.get(k)}
  assert changed == {"loss", "model.init_temperature", "model.init_logit_bias"}
  assert (siglip.model.init_temperature, siglip.model.init_logit_bias) == (0.1, -10.0)


def test_unknown_loss_is_named_with_the_choices(tiny_config):
  tiny_config.loss = "hinge"
  assert "loss='hinge': use one of ('clip', 'siglip')" in _message(tiny_config)


def test_siglip_refuses_the_softmax_losss_options_and_the_reverse(tiny_config):
  tiny_config.loss = "siglip"
  validate(tiny_config, 8)
  tiny_config.data.captions_per_image = 2  # the softmax loss's several right captions
  assert ("data.captions_per_image=2 is the softmax loss's multi-caption option; the sigmoid loss "
          "takes one caption per image: set --config.data.captions_per_image=1, or "
          "--config.loss=clip.") in _message(tiny_config)
  tiny_config.data.captions_per_image = 1
  tiny_config.task, tiny_config.model.num_classes = "image_classifier", 4
  assert "loss='siglip' scores image-text pairs, but task='image_classifier'" in _message(
      tiny_config)

  tiny_config.task, tiny_config.loss = "clip", "clip"
  tiny_config.model.init_logit_bias = -10.0  # SigLIP's bias, with the softmax loss
  assert ("model.init_logit_bias=-10.0 is the sigmoid loss's bias, which loss='clip' has not: set "
          "--config.loss=siglip") in _message(tiny_config)
