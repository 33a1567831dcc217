"""The checks that every config passes before training.

`validate` turns a config that cannot work into one error message that names each offending field
and how to fix it, before any data is read or any parameter initialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from jclip.config.defaults import ConfigError, unknown_fields
from jclip.config.derived import text_architecture
from jclip.losses import LOSSES
from jclip.models import IMAGE_TOWERS
from jclip.models.cnn import BLOCKS, GROUPS, NORMS, STEMS
from jclip.models.efficientnet import MIN_RESOLUTION, VARIANTS
from jclip.models.text import TEXT_PRESETS

DTYPES = ("float32", "bfloat16")
TOKENIZER_KINDS = ("sentencepiece", "wordpiece")


def _model_errors(config: ml_collections.ConfigDict) -> list[str]:
  model, errors = config.model, []
  if model.dtype not in DTYPES:
    errors.append(f"model.dtype={model.dtype!r}: use one of {DTYPES}.")
  if not isinstance(model.remat, bool):
    errors.append(
      f"model.remat={model.remat!r}: use True (recompute each block's activations in the "
      "backward pass instead of keeping them) or False."
    )
  if not 0 < model.init_temperature < 1:
    errors.append(
      f"model.init_temperature={model.init_temperature}: use a value in (0, 1), "
      "e.g. 0.07 as in CLIP."
    )
  if model.head_dim is not None and model.head_dim < 1:
    errors.append(
      f"model.head_dim={model.head_dim}: use None (a linear projection) or a width >= 1."
    )
  if not 0 <= model.head_dropout < 1:
    errors.append(f"model.head_dropout={model.head_dropout}: use a rate in [0, 1).")
  if model.max_logit_scale < 1:
    errors.append(f"model.max_logit_scale={model.max_logit_scale}: use at least 1 (CLIP uses 100).")
  if config.task != "clip" and (model.num_classes or 0) < 2:
    errors.append(f"model.num_classes={model.num_classes}: a classifier needs at least 2 classes.")
  image = model.image
  if image.tower not in IMAGE_TOWERS:
    errors.append(f"model.image.tower={image.tower!r}: use one of {IMAGE_TOWERS}.")
  elif image.tower == "efficientnet_lite":
    if image.variant not in VARIANTS:
      errors.append(f"model.image.variant={image.variant!r}: use one of {sorted(VARIANTS)}.")
  else:
    errors += _cnn_errors(image, config.data.image_size)
  return errors + _text_errors(config)


def _cnn_errors(image, image_size: int) -> list[str]:
  errors = []
  if image.block not in BLOCKS:
    errors.append(f"model.image.block={image.block!r}: use one of {BLOCKS}.")
  if image.norm not in NORMS:
    errors.append(f"model.image.norm={image.norm!r}: use one of {NORMS}.")
  if image.stem not in STEMS:
    errors.append(f"model.image.stem={image.stem!r}: use one of {STEMS}.")
  if len(image.widths) != len(image.depths) or not image.widths:
    errors.append(
      f"model.image.widths={tuple(image.widths)} and model.image.depths="
      f"{tuple(image.depths)} must be non-empty and of the same length (one per stage)."
    )
  if image.norm == "group" and any(w % GROUPS for w in image.widths):
    errors.append(
      f"model.image.widths={tuple(image.widths)}: with norm='group' every width must be "
      f"a multiple of {GROUPS}."
    )
  side = -(-image_size // image.stem_stride)  # the stem's map (a conv stem pads the edge)
  halvings = len(image.widths) - 1
  if image.block == "inverted" and side % 2 ** max(halvings, 0):
    errors.append(
      f"data.image_size={image_size} after a stem of stride {image.stem_stride} gives a map of "
      f"{side}x{side}, which model.image.block='inverted' cannot halve {halvings} time(s) "
      "in 2x2 patches (one merge between each two stages): change the size or the stride."
    )
  return errors


def _text_errors(config: ml_collections.ConfigDict) -> list[str]:
  text = config.model.text
  if text.preset not in TEXT_PRESETS:
    return [f"model.text.preset={text.preset!r} is unknown: choose one of {sorted(TEXT_PRESETS)}."]
  architecture, errors = text_architecture(config), []
  if architecture.width % architecture.num_heads:
    errors.append(
      f"model.text.width={architecture.width} is not a multiple of "
      f"model.text.num_heads={architecture.num_heads}."
    )
  if config.data.max_text_len > architecture.max_len:
    errors.append(
      f"data.max_text_len={config.data.max_text_len} exceeds the text tower's "
      f"positions (model.text.max_len={architecture.max_len}): lower one or raise the "
      "other."
    )
  if (
    config.tokenizer.kind == "sentencepiece"
    and text.vocab_size is not None
    and (text.vocab_size < config.tokenizer.vocab_size)
  ):
    errors.append(
      f"model.text.vocab_size={text.vocab_size} is smaller than tokenizer.vocab_size="
      f"{config.tokenizer.vocab_size}: leave model.text.vocab_size unset to match."
    )
  return errors


def _loss_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The sigmoid loss (loss='siglip') scores one caption per image and has a bias; the softmax
  loss has none."""
  if config.loss not in LOSSES:
    return [f"loss={config.loss!r}: use one of {LOSSES}."]
  errors, bias = [], config.model.init_logit_bias
  if config.loss == "siglip":
    if config.task != "clip":
      errors.append(
        f"loss='siglip' scores image-text pairs, but task={config.task!r} is a "
        "classifier (cross-entropy): set --config.loss=clip."
      )
    if config.data.captions_per_image > 1:
      errors.append(
        f"data.captions_per_image={config.data.captions_per_image} is the softmax "
        "loss's multi-caption option; the sigmoid loss takes one caption per image: "
        "set --config.data.captions_per_image=1, or --config.loss=clip."
      )
  elif bias is not None:
    errors.append(
      f"model.init_logit_bias={bias} is the sigmoid loss's bias, which loss='clip' has "
      "not: set --config.loss=siglip, or use a config without the field "
      "(configs/quickstart.py rather than configs/quickstart_siglip.py)."
    )
  return errors


def _tokenizer_errors(config: ml_collections.ConfigDict) -> list[str]:
  """The tokenizer must be the one the text tower's embedding table was trained with."""
  kind, init = config.tokenizer.kind, config.init
  if kind not in TOKENIZER_KINDS:
    return [f"tokenizer.kind={kind!r}: use one of {TOKENIZER_KINDS}."]
  if kind == "wordpiece" and not init.text_pretrained:
    return [
      "tokenizer.kind='wordpiece' takes its vocabulary from a pretrained text tower: set "
      "--config.init.text_pretrained=minilm_l6 (or a Hugging Face folder), or use "
      "tokenizer.kind='sentencepiece'."
    ]
  errors = []
  if init.text_pretrained and kind != "wordpiece":
    errors.append(
      f"init.text_pretrained={init.text_pretrained!r} needs the WordPiece vocabulary "
      "its embeddings were trained with: set --config.tokenizer.kind=wordpiece."
    )
  if init.text_pretrained and init.text_classifier_workdir:
    errors.append(
      "init.text_pretrained and init.text_classifier_workdir both start the text "
      "tower: set only one."
    )
  return errors


def _locked_tower_errors(config: ml_collections.ConfigDict) -> list[str]:
  """A pretrained image backbone needs the tower that holds it; a locked one keeps its BatchNorm
  statistics; cached features need a locked tower (they would go stale as it trained, or differ
  from step to step with dropout)."""
  image, optim, data = config.model.image, config.optim, config.data
  scale = optim.image_backbone_lr_scale
  efficientnet = image.tower == "efficientnet_lite"
  errors = []
  if scale < 0:
    errors.append(
      f"optim.image_backbone_lr_scale={scale}: use a value >= 0 (1 trains the image "
      "backbone like the rest, 0 locks it)."
    )
  if optim.text_backbone_lr_scale < 0:
    errors.append(
      f"optim.text_backbone_lr_scale={optim.text_backbone_lr_scale}: use a "
      "value >= 0 (1 trains the text tower like the rest, 0 freezes it)."
    )
  if config.init.image_pretrained and not efficientnet:
    errors.append(
      f"init.image_pretrained={config.init.image_pretrained!r} is an "
      "EfficientNet-Lite backbone: set --config.model.image.tower=efficientnet_lite "
      "(and model.image.variant)."
    )
  if efficientnet:
    if image.locked != (scale == 0):
      errors.append(
        f"model.image.locked={image.locked} but optim.image_backbone_lr_scale="
        f"{scale}: a locked backbone (BatchNorm statistics frozen) has scale 0, a "
        "trained one a scale above 0; set both."
      )
    if data.image_size < MIN_RESOLUTION:
      errors.append(
        f"data.image_size={data.image_size} is too small for EfficientNet-Lite: "
        f"use at least {MIN_RESOLUTION} (it was trained at "
        f"{VARIANTS[image.variant].resolution if image.variant in VARIANTS else 224})."
      )
  if data.cached_text and config.model.text.preset in TEXT_PRESETS:
    dropout = text_architecture(config).dropout_rate
    if not (optim.text_backbone_lr_scale == 0 and dropout == 0 and config.task == "clip"):
      errors.append(
        "data.cached_text=True caches a locked text tower's features: it needs "
        f"optim.text_backbone_lr_scale=0 (now {optim.text_backbone_lr_scale}) and "
        f"model.text.dropout_rate=0 (now {dropout}), task 'clip'; or set "
        "--config.data.cached_text=False."
      )
  if data.cached_views < 0:
    errors.append(
      f"data.cached_views={data.cached_views}: use 0 (no cache) or the number of views per image."
    )
  elif data.cached_views and not (efficientnet and scale == 0 and config.task == "clip"):
    errors.append(
      f"data.cached_views={data.cached_views} caches a locked backbone's features: "
      "it needs model.image.tower='efficientnet_lite' with "
      "optim.image_backbone_lr_scale=0 (and task 'clip'); or set "
      "--config.data.cached_views=0."
    )
  return errors


def _run_errors(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """The batch, the step count, the optimiser and the loop's intervals."""
  errors, accum_steps = [], config.accum_steps
  if not isinstance(accum_steps, int) or accum_steps < 1:
    errors.append(
      f"accum_steps={accum_steps!r}: use a whole number >= 1 (1: no accumulation; k: "
      "each optimiser step runs the model on k chunks of batch_size pairs)."
    )
  if config.batch_size <= 0 or config.batch_size % num_devices:
    chunk = (
      f" (the chunk of each of the accum_steps={accum_steps} passes: every device runs "
      "batch_size / devices pairs at a time)"
      if accum_steps != 1
      else ""
    )
    errors.append(
      f"batch_size={config.batch_size}{chunk} does not split over {num_devices} "
      f"device(s): use a positive multiple of {num_devices}, e.g. --config.batch_size="
      f"{max(1, config.batch_size // num_devices) * num_devices}."
    )
  if config.num_steps <= 0:
    errors.append(f"num_steps={config.num_steps}: must be positive.")
  if not 0 <= config.optim.warmup_steps < max(config.num_steps, 1):
    errors.append(
      f"optim.warmup_steps={config.optim.warmup_steps} must be in [0, num_steps="
      f"{config.num_steps})."
    )
  if config.optim.learning_rate <= 0:
    errors.append(f"optim.learning_rate={config.optim.learning_rate}: must be positive.")
  if not 0 <= config.optim.ema_decay < 1:
    errors.append(
      f"optim.ema_decay={config.optim.ema_decay}: use 0 (no average) or a decay in (0, 1), e.g. "
      "0.999 (the average spans about 1 / (1 - decay) steps)."
    )
  for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if config[field] <= 0:
      errors.append(f"{field}={config[field]}: must be positive.")
  captions = config.data.captions_per_image
  if captions < 1 or (captions > 1 and config.task != "clip"):
    errors.append(
      f"data.captions_per_image={captions}: use 1, or more than 1 for task 'clip' "
      "only (a classifier scores one input per label)."
    )
  return errors


def validate(
  config: ml_collections.ConfigDict, num_devices: int, more_errors: Sequence[str] = ()
) -> None:
  """Raises ConfigError listing every problem found, and `more_errors` (those that other modules
  find, e.g. jclip.evaluation.evaluators.config_errors); `num_devices` is the global device
  count. `config` has every field (jclip.config.defaults.complete)."""
  errors = [
    f"{field}: no such field; fix its name in the config file." for field in unknown_fields(config)
  ]
  errors += (
    _model_errors(config)
    + list(more_errors)
    + _run_errors(config, num_devices)
    + _loss_errors(config)
    + _tokenizer_errors(config)
    + _locked_tower_errors(config)
  )
  if errors:
    raise ConfigError("The config cannot work:\n  - " + "\n  - ".join(errors))
