"""Every config field with its default, written once.

`base()` is the complete config of the quickstart (a tiny CLIP on the embedded captioned shapes):
configs/ files start from it and state only what they change, as flax's examples do with their
`default.py`. Three sections are replaced whole by some variants, so each has a builder that fills
in the fields a variant leaves out: `image_tower` (model.image), `text_tower` (model.text) and
`evaluator` (an entry of config.evals).

`complete` turns a config read back from a checkpoint into one with every field of today's schema:
a field added since the checkpoint was written takes its default, which is always what the field's
absence meant before (accum_steps=1, loss="clip", ...). That is the rule for a new field: its
default must keep old runs as they were. Library code can then read `config.accum_steps`, never
`config.get("accum_steps", 1)`.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterator

import ml_collections
from ml_collections import config_dict

from jclip.errors import UserError
from jclip.models.text import TEXT_PRESETS, TextPreset


class ConfigError(UserError):
  """A config value that cannot work; the message names the field and the fix."""


# The fields of each image tower (model.image.tower), with their defaults; a config of one tower
# holds the other's fields as None.
IMAGE_TOWER_FIELDS = {
  "cnn": dict(
    widths=(32, 64, 128),
    depths=(1, 1, 1),
    norm="group",
    stem="conv",
    stem_stride=2,
    block="residual",
    depthwise_kernel=5,
    expand=4,
  ),
  # EfficientNet-Lite0..2 (jclip/models/efficientnet.py). A locked backbone keeps BatchNorm on
  # its running statistics in training too (LiT).
  "efficientnet_lite": dict(variant="lite0", locked=False),
}
# The fields of each tokenizer kind (tokenizer.kind): sentencepiece is trained on the training
# captions; WordPiece is the vocabulary of the pretrained text tower (init.text_pretrained).
TOKENIZER_FIELDS = {"sentencepiece": dict(vocab_size=128, model_type="unigram"), "wordpiece": {}}

# An entry of config.evals besides its `type` (jclip/evaluation/evaluators.py): its split, how
# often it runs (0: never), its embedding batch, and the zero-shot prompt templates (None: the
# 8 of jclip.evaluation.zeroshot.DEFAULT_TEMPLATES).
EVAL_ENTRY_DEFAULTS = dict(split="val", every=100, batch_size=256, templates=None)


def _chosen_section(choice_field: str, choice: str, fields_of: dict, overrides: dict):
  """A section whose `choice_field` picks which fields apply: that choice's defaults (and
  `overrides`), every other choice's fields None."""
  own = fields_of.get(choice, {})
  _check_fields(overrides, own, f"{choice_field}={choice!r}")
  section = {
    name: config_dict.placeholder(type(default))
    for fields in fields_of.values()
    for name, default in fields.items()
  }
  section.update({**own, **overrides})
  return ml_collections.ConfigDict({choice_field: choice, **section})


def image_tower(tower: str = "cnn", **overrides) -> ml_collections.ConfigDict:
  """`config.model.image`: the fields of `tower` (IMAGE_TOWER_FIELDS) with `overrides`."""
  return _chosen_section("tower", tower, IMAGE_TOWER_FIELDS, overrides)


def tokenizer(kind: str = "sentencepiece", **overrides) -> ml_collections.ConfigDict:
  """`config.tokenizer`: the fields of `kind` (TOKENIZER_FIELDS) with `overrides`."""
  return _chosen_section("kind", kind, TOKENIZER_FIELDS, overrides)


def text_tower(preset: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model.text`: a preset of jclip.models.text.TEXT_PRESETS and one field per attribute
  of it, None (the preset's value) unless overridden: `--config.model.text.num_layers=2` changes
  one attribute of the preset and leaves the rest alone. vocab_size None means the tokenizer's
  vocabulary (jclip.config.derived.text_architecture)."""
  _check_fields(overrides, TextPreset.__dataclass_fields__, "model.text")
  fields = {
    name: overrides[name]
    if name in overrides
    else config_dict.placeholder(type(getattr(TEXT_PRESETS["small"], name)))
    for name in TextPreset.__dataclass_fields__
  }
  return ml_collections.ConfigDict(dict(preset=preset, **fields))


def evaluator(kind: str, **overrides) -> ml_collections.ConfigDict:
  """An entry of config.evals: `kind` is an evaluator type ("retrieval", "zeroshot",
  "classification"). Every field is present, so each can be set from the command line
  (--config.evals.val.every=50)."""
  _check_fields(overrides, EVAL_ENTRY_DEFAULTS, "evals entry")
  fields = {**EVAL_ENTRY_DEFAULTS, **overrides}
  if fields["templates"] is None:
    fields["templates"] = config_dict.placeholder(tuple)
  return ml_collections.ConfigDict(dict(type=kind, **fields))


def base() -> ml_collections.ConfigDict:
  """Every field of a config, at the quickstart's values."""
  config = ml_collections.ConfigDict()
  # What is trained (jclip/tasks.py): "clip", or one tower as a classifier ("image_classifier",
  # "text_classifier", with model.num_classes).
  config.task = "clip"
  # "clip": CLIP's softmax loss; "siglip": SigLIP's sigmoid loss (configs/quickstart_siglip.py).
  config.loss = "clip"
  config.seed = 0
  config.batch_size = 128  # global: split over every device of every host; sets the memory
  # Each optimiser step trains on accum_steps * batch_size pairs (the loss and its negatives span
  # all of them), running the model on batch_size at a time: the exact large-batch gradient for
  # one more forward pass (jclip/training/step.py).
  config.accum_steps = 1
  config.num_steps = 400
  config.log_every = 50
  config.checkpoint_every = 200
  config.keep_checkpoints = 2

  config.optim = ml_collections.ConfigDict(
    dict(
      learning_rate=2e-3,
      warmup_steps=50,
      end_lr_ratio=0.02,
      weight_decay=0.05,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      grad_clip_norm=1.0,
      # A NaN or inf gradient skips its update; this many in a row stop the run.
      max_consecutive_nonfinite=5,
      # An exponential moving average of the trained weights, kept beside them (0: none). With
      # one, the evaluators, the best checkpoint, eval.py and jclip.load use the average; the
      # decay warms up: min(ema_decay, (1 + n) / (10 + n)) at update n.
      ema_decay=0.0,
      # Learning rates of the text tower and the image tower (all but their projections)
      # relative to the rest; 0 locks the tower (configs/flickr8k_minilm.py, flickr8k_lit.py).
      text_backbone_lr_scale=1.0,
      image_backbone_lr_scale=1.0,
    )
  )

  config.data = ml_collections.ConfigDict(
    dict(
      # "synthetic_shapes" (embedded, no download: num_train, num_val, seed) or "folder" (an
      # image-caption folder at root, converted once to TFDS under tfds_dir, default
      # ~/.cache/jclip/tfds; jclip/data/folder.py).
      name="synthetic_shapes",
      num_train=50_000,
      num_val=350,
      seed=0,
      root=config_dict.placeholder(str),
      tfds_dir=config_dict.placeholder(str),
      # A folder's table of captions (in root, beside images/): .tsv tab-separated and unquoted,
      # .csv comma-separated and quoted; and the names of its columns. The caption index and the
      # label columns may be absent from the file: the captions then keep the rows' order, and
      # the images have no class.
      captions_file="captions.tsv",
      image_column="image",
      caption_column="caption",
      caption_index_column="caption_idx",
      split_column="split",
      label_column="category",
      image_size=32,
      max_text_len=20,
      num_threads=2,
      # Random crops covering [crop_scale_min, 1] of the image (1: none) and mirroring. None
      # here: the shapes' captions name positions, and a mirrored "top left" is wrong.
      crop_scale_min=1.0,
      flip=False,
      # Different captions of each image in one step (jclip.losses.clip_loss: K right captions).
      captions_per_image=1,
      # Features of locked towers computed once and cached (jclip/runs/feature_cache.py): this
      # many views per image of a locked image backbone (0: none), and every caption's features of
      # a locked text tower, under feature_cache_dir (default ~/.cache/jclip/features).
      cached_views=0,
      cached_text=False,
      feature_cache_dir=config_dict.placeholder(str),
      # Recorded by train.py for a classifier (not set by hand): the training data's class names,
      # in the order of the logits, so that a checkpoint names what it predicts (jclip.load).
      class_names=config_dict.placeholder(tuple),
    )
  )
  config.tokenizer = tokenizer("sentencepiece")

  config.model = ml_collections.ConfigDict(
    dict(
      embed_dim=128,  # the shared space that both towers project into
      # The towers' projections into it: linear (None), or a two-layer MLP with this hidden width
      # and dropout (jclip/models/heads.py).
      head_dim=config_dict.placeholder(int),
      head_dropout=0.0,
      init_temperature=0.07,
      max_logit_scale=100.0,
      # The towers' computation dtype ("float32" or "bfloat16"); parameters, optimiser state,
      # normalisation, logits, softmax and the loss stay float32 (tests/test_precision.py).
      dtype="float32",
      # Recompute each tower block's activations in the backward pass instead of keeping them
      # (jclip/models/remat.py): memory for one more forward pass of the blocks, on an
      # accelerator (XLA's CPU backend saves none); the gradients are the same.
      remat=False,
      num_classes=config_dict.placeholder(int),  # a classifier's
      # The sigmoid loss's logit bias at the start; None: -10, as in the SigLIP paper.
      init_logit_bias=config_dict.placeholder(float),
    )
  )
  config.model.image = image_tower()
  config.model.text = text_tower(
    "small", max_len=32, width=128, num_layers=2, num_heads=4, mlp_dim=512
  )

  # Where the towers start (jclip/training/transfer.py); None: freshly initialised.
  config.init = ml_collections.ConfigDict(
    dict(
      # A Hugging Face BERT-family folder or a packaged one ("minilm_l6"), an EfficientNet-Lite
      # state dict or a packaged one ("efficientnet_lite0").
      text_pretrained=config_dict.placeholder(str),
      image_pretrained=config_dict.placeholder(str),
      # Workdirs of trained classifiers whose backbones start CLIP's towers (the course path).
      image_classifier_workdir=config_dict.placeholder(str),
      text_classifier_workdir=config_dict.placeholder(str),
    )
  )

  # Scored during training (jclip/evaluation/evaluators.py); the best step's checkpoint is kept.
  config.evals = ml_collections.ConfigDict(
    dict(val=evaluator("retrieval"), zeroshot=evaluator("zeroshot"))
  )
  config.best_metric = "val/rsum"  # None or "" (--config.best_metric=): keep no best checkpoint
  return config


def choose_variant(variants: dict, name: str, config_file: str):
  """`variants[name]`, the variant that `--config=<config_file>:<name>` asks for; a ConfigError
  naming the valid ones otherwise."""
  if name not in variants:
    raise ConfigError(
      f"{config_file}:{name} is not a variant of {config_file}: use one of "
      f"{', '.join(sorted(variants))} (e.g. --config={config_file}:"
      f"{sorted(variants)[0]})."
    )
  return variants[name]


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
  """A plain JSON-able dict (tuples become lists), comparable with one read back from disk."""
  return json.loads(config.to_json())


def _check_fields(overrides: dict, known, where: str) -> None:
  unknown = sorted(set(overrides) - set(known))
  if unknown:
    raise ConfigError(f"Unknown {where} field(s) {unknown}: the fields are {sorted(known)}.")


def _migrated(stored: dict) -> dict:
  """A stored config in today's layout, for the fields whose meaning moved (not only added):

  - model.image.embed_dim and model.text.embed_dim (before 2026-12) were references to
    model.embed_dim, always equal to it: the one field now.
  - model.text.vocab_size was a reference to tokenizer.vocab_size; None now says "the
    tokenizer's", so a sentencepiece config whose two sizes agree stores None.
  """
  stored = copy.deepcopy(stored)
  model = stored.get("model", {})
  for tower in ("image", "text"):
    model.get(tower, {}).pop("embed_dim", None)
  text, tokenizer = model.get("text", {}), stored.get("tokenizer", {})
  if (
    tokenizer.get("kind") == "sentencepiece"
    and text.get("vocab_size") is not None
    and text.get("vocab_size") == tokenizer.get("vocab_size")
  ):
    text["vocab_size"] = None
  return stored


def _merged(defaults, stored):
  """`stored` with the fields it lacks taken from `defaults`, at every depth."""
  if not isinstance(defaults, dict) or not isinstance(stored, dict):
    return stored
  return {**defaults, **{key: _merged(defaults.get(key), value) for key, value in stored.items()}}


def _defaults_for(stored: dict) -> dict:
  """The defaults that complete `stored`: base()'s, with the sections of its own choices (its
  image tower's, its tokenizer's, its text preset's: every override None) and its own evaluators
  (each entry completed with EVAL_ENTRY_DEFAULTS)."""
  defaults = to_json_dict(base())
  model = stored.get("model", {})
  defaults["model"]["image"] = to_json_dict(image_tower(model.get("image", {}).get("tower", "cnn")))
  defaults["model"]["text"] = to_json_dict(text_tower(model.get("text", {}).get("preset", "small")))
  defaults["tokenizer"] = to_json_dict(
    tokenizer(stored.get("tokenizer", {}).get("kind", "sentencepiece"))
  )
  evals = stored.get("evals", defaults["evals"]) or {}
  defaults["evals"] = {
    name: to_json_dict(evaluator(entry.get("type"))) for name, entry in evals.items()
  }
  return defaults


def complete(config) -> ml_collections.ConfigDict:
  """A config (a ConfigDict or the JSON dict of one) with every field of today's schema: the
  fields it lacks take their defaults. Idempotent; a config made from base() comes back equal."""
  stored = _migrated(config if isinstance(config, dict) else to_json_dict(config))
  return ml_collections.ConfigDict(_merged(_defaults_for(stored), stored))


def leaf_paths(tree: dict, prefix: str = "") -> Iterator[str]:
  """The dotted path of every field of a JSON config dict: "optim.learning_rate", ..."""
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      yield from leaf_paths(value, path + ".")
    else:
      yield path


def unknown_fields(config: ml_collections.ConfigDict) -> list[str]:
  """The fields of `config` that no jclip code reads (a typo in a config file), each with the
  closest known field: ["batch_sise (did you mean batch_size?)"]."""
  stored = to_json_dict(config)
  known = set(leaf_paths(_defaults_for(stored)))
  known_sections = {path.rpartition(".")[0] for path in known}
  found = []
  for path in leaf_paths(stored):
    if path in known or path in known_sections:
      continue
    close = difflib.get_close_matches(path, known, n=1)
    found.append(path + (f" (did you mean {close[0]}?)" if close else ""))
  return found
