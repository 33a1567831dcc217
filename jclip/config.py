"""Config helpers: the text-tower override block and the checks that run before any training.

Every config is an `ml_collections.ConfigDict` (see configs/). `validate` turns a config that cannot
work into one error message that names each offending field and how to fix it, before any data is
read or any parameter initialised.
"""

from __future__ import annotations

import json
from typing import Sequence

import ml_collections
from ml_collections import config_dict

from jclip.errors import UserError
from jclip.losses import LOSSES
from jclip.models.clip import IMAGE_TOWERS
from jclip.models.cnn import GROUPS, NORMS, STEMS
from jclip.models.efficientnet import MIN_RESOLUTION, VARIANTS
from jclip.models.text import TEXT_PRESETS, TextPreset

DTYPES = ("float32", "bfloat16")
TOKENIZER_KINDS = ("sentencepiece", "wordpiece")


def text_tower_config(preset: str, embed_dim_ref, **overrides) -> ml_collections.ConfigDict:
  """`config.model.text`: a preset name, plus one overridable field per preset attribute.

  Fields left at None take the preset's value, so `--config.model.text.num_layers=2` changes one
  attribute of the preset and leaves the rest alone.
  """
  fields = {name: overrides.pop(name) if name in overrides else
            config_dict.placeholder(type(getattr(TEXT_PRESETS["small"], name)))
            for name in TextPreset.__dataclass_fields__}
  if overrides:
    raise ConfigError(f"Unknown text tower fields {sorted(overrides)}: the fields are "
                      f"{sorted(TextPreset.__dataclass_fields__)}.")
  return ml_collections.ConfigDict(dict(preset=preset, embed_dim=embed_dim_ref, **fields))


# The fields of an entry of config.evals besides its type (see jclip/evaluation/evaluators.py).
EVAL_ENTRY_DEFAULTS = dict(split="val", every=100, batch_size=256, templates=None)


def evaluator(kind: str, **overrides) -> ml_collections.ConfigDict:
  """An entry of config.evals: `kind` is an evaluator type ("retrieval", "zeroshot",
  "classification"). Every field is present, so each can be set from the command line
  (--config.evals.val.every=50)."""
  unknown = sorted(set(overrides) - set(EVAL_ENTRY_DEFAULTS))
  if unknown:
    raise ConfigError(f"Unknown evaluator fields {unknown}: the fields are "
                      f"{sorted(EVAL_ENTRY_DEFAULTS)}.")
  fields = {**EVAL_ENTRY_DEFAULTS, **overrides}
  if fields["templates"] is None:
    fields["templates"] = config_dict.placeholder(tuple)
  return ml_collections.ConfigDict(dict(type=kind, **fields))


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
  """A plain JSON-able dict (tuples become lists), comparable with one read back from disk."""
  return json.loads(config.to_json())


class ConfigError(UserError):
  """A config value that cannot work; the message names the field and the fix."""


def _model_errors(model, task: str) -> list[str]:
  errors = []
  if task == "clip" and model.image.embed_dim != model.text.embed_dim:
    errors.append(f"model.image.embed_dim={model.image.embed_dim} and model.text.embed_dim="
                  f"{model.text.embed_dim} differ: both towers must project to the same space. Set "
                  "--config.model.embed_dim to change both.")
  if model.dtype not in DTYPES:
    errors.append(f"model.dtype={model.dtype!r}: use one of {DTYPES}.")
  if not 0 < model.init_temperature < 1:
    errors.append(f"model.init_temperature={model.init_temperature}: use a value in (0, 1), "
                  "e.g. 0.07 as in CLIP.")
  if model.max_logit_scale < 1:
    errors.append(f"model.max_logit_scale={model.max_logit_scale}: use at least 1 (CLIP uses 100).")

  image = model.image
  tower = image.get("tower", "cnn")
  if tower not in IMAGE_TOWERS:
    errors.append(f"model.image.tower={tower!r}: use one of {IMAGE_TOWERS}.")
  if tower == "efficientnet_lite":
    if image.get("variant") not in VARIANTS:
      errors.append(f"model.image.variant={image.get('variant')!r}: use one of "
                    f"{sorted(VARIANTS)}.")
  else:
    errors += _cnn_errors(image)
  errors += _text_errors(model.text)
  return errors


def _cnn_errors(image) -> list[str]:
  errors = []
  if image.norm not in NORMS:
    errors.append(f"model.image.norm={image.norm!r}: use one of {NORMS}.")
  if image.stem not in STEMS:
    errors.append(f"model.image.stem={image.stem!r}: use one of {STEMS}.")
  if len(image.widths) != len(image.depths) or not image.widths:
    errors.append(f"model.image.widths={tuple(image.widths)} and model.image.depths="
                  f"{tuple(image.depths)} must be non-empty and of the same length (one per stage).")
  if image.norm == "group" and any(w % GROUPS for w in image.widths):
    errors.append(f"model.image.widths={tuple(image.widths)}: with norm='group' every width must be "
                  f"a multiple of {GROUPS}.")
  return errors


def _text_errors(text) -> list[str]:
  errors = []
  if text.preset not in TEXT_PRESETS:
    errors.append(f"model.text.preset={text.preset!r} is unknown: choose one of "
                  f"{sorted(TEXT_PRESETS)}.")
    return errors
  preset = TEXT_PRESETS[text.preset]
  width = text.width if text.width is not None else preset.width
  heads = text.num_heads if text.num_heads is not None else preset.num_heads
  if width % heads:
    errors.append(f"model.text.width={width} is not a multiple of model.text.num_heads={heads}.")
  return errors


def _loss_errors(config: ml_collections.ConfigDict, task: str) -> list[str]:
  """The sigmoid loss (loss='siglip') scores one caption per image and has a bias; the softmax
  loss has none."""
  loss = config.get("loss", "clip")
  if loss not in LOSSES:
    return [f"loss={loss!r}: use one of {LOSSES}."]
  errors = []
  bias = config.model.get("init_logit_bias")
  if loss == "siglip":
    if task != "clip":
      errors.append(f"loss='siglip' scores image-text pairs, but task={task!r} is a classifier "
                    "(cross-entropy): set --config.loss=clip.")
    captions = config.data.get("captions_per_image", 1)
    if captions > 1:
      errors.append(f"data.captions_per_image={captions} is the softmax loss's multi-caption "
                    "option; the sigmoid loss takes one caption per image: set "
                    "--config.data.captions_per_image=1, or --config.loss=clip.")
  elif bias is not None:
    errors.append(f"model.init_logit_bias={bias} is the sigmoid loss's bias, which loss='clip' has "
                  "not: set --config.loss=siglip, or use a config without the field "
                  "(configs/quickstart.py rather than configs/quickstart_siglip.py).")
  return errors


def _tokenizer_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The tokenizer must be the one the text tower's embedding table was trained with."""
  kind = config.tokenizer.kind
  init = config.get("init") or {}
  pretrained = init.get("text_pretrained")
  if kind not in TOKENIZER_KINDS:
    return [f"tokenizer.kind={kind!r}: use one of {TOKENIZER_KINDS}."]
  if kind == "wordpiece" and not pretrained:
    return ["tokenizer.kind='wordpiece' takes its vocabulary from a pretrained text tower: set "
            "--config.init.text_pretrained=minilm_l6 (or a Hugging Face folder), or use "
            "tokenizer.kind='sentencepiece'."]
  errors = []
  if pretrained and kind != "wordpiece":
    errors.append(f"init.text_pretrained={pretrained!r} needs the WordPiece vocabulary its "
                  "embeddings were trained with: set --config.tokenizer.kind=wordpiece.")
  if pretrained and init.get("text_classifier_workdir"):
    errors.append("init.text_pretrained and init.text_classifier_workdir both start the text "
                  "tower: set only one.")
  return errors


def _locked_tower_errors(config: ml_collections.ConfigDict) -> list[str]:
  """A pretrained image backbone needs the tower that holds it; a locked one keeps its BatchNorm
  statistics; cached features need a locked tower (they would go stale as it trained, or differ
  from step to step with dropout)."""
  image = config.model.image
  pretrained = (config.get("init") or {}).get("image_pretrained")
  scale = config.optim.get("image_backbone_lr_scale", 1.0)
  efficientnet = image.get("tower", "cnn") == "efficientnet_lite"
  errors = []
  if scale < 0:
    errors.append(f"optim.image_backbone_lr_scale={scale}: use a value >= 0 (1 trains the image "
                  "backbone like the rest, 0 locks it).")
  if pretrained and not efficientnet:
    errors.append(f"init.image_pretrained={pretrained!r} is an EfficientNet-Lite backbone: set "
                  "--config.model.image.tower=efficientnet_lite (and model.image.variant).")
  if efficientnet:
    if image.locked != (scale == 0):
      errors.append(f"model.image.locked={image.locked} but optim.image_backbone_lr_scale="
                    f"{scale}: a locked backbone (BatchNorm statistics frozen) has scale 0, a "
                    "trained one a scale above 0; set both.")
    if config.data.image_size < MIN_RESOLUTION:
      errors.append(f"data.image_size={config.data.image_size} is too small for EfficientNet-Lite: "
                    f"use at least {MIN_RESOLUTION} (it was trained at "
                    f"{VARIANTS[image.variant].resolution if image.variant in VARIANTS else 224}).")
  text = config.model.text
  dropout = text.dropout_rate if text.get("dropout_rate") is not None else (
      TEXT_PRESETS[text.preset].dropout_rate if text.preset in TEXT_PRESETS else 0.0)
  if config.data.get("cached_text", False) and not (
      config.optim.text_backbone_lr_scale == 0 and dropout == 0
      and config.get("task", "clip") == "clip"):
    errors.append("data.cached_text=True caches a locked text tower's features: it needs "
                  f"optim.text_backbone_lr_scale=0 (now {config.optim.text_backbone_lr_scale}) and "
                  f"model.text.dropout_rate=0 (now {dropout}), task 'clip'; or set "
                  "--config.data.cached_text=False.")
  views = config.data.get("cached_views", 0)
  if views < 0:
    errors.append(f"data.cached_views={views}: use 0 (no cache) or the number of views per image.")
  elif views and not (efficientnet and scale == 0 and config.get("task", "clip") == "clip"):
    errors.append(f"data.cached_views={views} caches a locked backbone's features: it needs "
                  "model.image.tower='efficientnet_lite' with optim.image_backbone_lr_scale=0 "
                  "(and task 'clip'); or set --config.data.cached_views=0.")
  return errors


def validate(config: ml_collections.ConfigDict, num_devices: int,
             more_errors: Sequence[str] = ()) -> None:
  """Raises ConfigError listing every problem found, and `more_errors` (those that other modules
  find, e.g. jclip.evaluation.evaluators.config_errors); `num_devices` is the global device
  count."""
  task = config.get("task", "clip")
  errors = _model_errors(config.model, task) + list(more_errors)
  if task != "clip" and config.model.get("num_classes", 0) < 2:
    errors.append(f"model.num_classes={config.model.get('num_classes')}: a classifier needs at "
                  "least 2 classes.")
  accum_steps = config.get("accum_steps", 1)
  if not isinstance(accum_steps, int) or accum_steps < 1:
    errors.append(f"accum_steps={accum_steps!r}: use a whole number >= 1 (1: no accumulation; k: "
                  "each optimiser step runs the model on k chunks of batch_size pairs).")
  if config.batch_size <= 0 or config.batch_size % num_devices:
    chunk = (f" (the chunk of each of the accum_steps={accum_steps} passes: every device runs "
             "batch_size / devices pairs at a time)" if accum_steps != 1 else "")
    errors.append(f"batch_size={config.batch_size}{chunk} does not split over {num_devices} "
                  f"device(s): use a positive multiple of {num_devices}, e.g. --config.batch_size="
                  f"{max(1, config.batch_size // num_devices) * num_devices}.")
  if config.num_steps <= 0:
    errors.append(f"num_steps={config.num_steps}: must be positive.")
  if not 0 <= config.optim.warmup_steps < max(config.num_steps, 1):
    errors.append(f"optim.warmup_steps={config.optim.warmup_steps} must be in [0, num_steps="
                  f"{config.num_steps}).")
  if config.optim.learning_rate <= 0:
    errors.append(f"optim.learning_rate={config.optim.learning_rate}: must be positive.")
  for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if config[field] <= 0:
      errors.append(f"{field}={config[field]}: must be positive.")
  if config.optim.text_backbone_lr_scale < 0:
    errors.append(f"optim.text_backbone_lr_scale={config.optim.text_backbone_lr_scale}: use a "
                  "value >= 0 (1 trains the text tower like the rest, 0 freezes it).")
  captions = config.data.get("captions_per_image", 1)
  if captions < 1 or (captions > 1 and task != "clip"):
    errors.append(f"data.captions_per_image={captions}: use 1, or more than 1 for task 'clip' "
                  "only (a classifier scores one input per label).")
  errors += _loss_errors(config, task) + _tokenizer_errors(config) + _locked_tower_errors(config)
  text = config.model.text
  if text.preset in TEXT_PRESETS:
    max_len = text.max_len if text.max_len is not None else TEXT_PRESETS[text.preset].max_len
    if config.data.max_text_len > max_len:
      errors.append(f"data.max_text_len={config.data.max_text_len} exceeds the text tower's "
                    f"positions (model.text.max_len={max_len}): lower one or raise the other.")
  if config.tokenizer.kind == "sentencepiece" and text.vocab_size is not None and (
      text.vocab_size < config.tokenizer.vocab_size):
    errors.append(f"model.text.vocab_size={text.vocab_size} is smaller than tokenizer.vocab_size="
                  f"{config.tokenizer.vocab_size}: leave model.text.vocab_size unset to match.")
  if errors:
    raise ConfigError("The config cannot work:\n  - " + "\n  - ".join(errors))
