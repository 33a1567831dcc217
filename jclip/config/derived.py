"""Values that follow from a config: the text tower's architecture and the pairs of a step."""

from __future__ import annotations

import dataclasses

import ml_collections

from jclip.config.defaults import ConfigError
from jclip.models.text import TEXT_PRESETS, TextPreset


def text_architecture(config: ml_collections.ConfigDict) -> TextPreset:
  """The text tower that config.model.text describes: its preset, with every field that is not
  None in place of the preset's. A vocab_size of None is the tokenizer's: sentencepiece's
  tokenizer.vocab_size, or for WordPiece the pretrained tower's own (the preset's)."""
  text = config.model.text
  if text.preset not in TEXT_PRESETS:
    raise ConfigError(
      f"model.text.preset={text.preset!r} is unknown: choose one of {sorted(TEXT_PRESETS)}."
    )
  overrides = {
    field: text[field] for field in TextPreset.__dataclass_fields__ if text[field] is not None
  }
  if text.vocab_size is None and config.tokenizer.kind == "sentencepiece":
    overrides["vocab_size"] = config.tokenizer.vocab_size
  return dataclasses.replace(TEXT_PRESETS[text.preset], **overrides)


def step_batch_size(config: ml_collections.ConfigDict) -> int:
  """The pairs of one optimiser step, over all devices: accum_steps chunks of batch_size."""
  return config.accum_steps * config.batch_size


def describe_step_batch(config: ml_collections.ConfigDict) -> str:
  """The pairs of one optimiser step, for logs: "1024 (8 chunks of 128)", or "128"."""
  chunks = (
    f" ({config.accum_steps} chunks of {config.batch_size})" if config.accum_steps > 1 else ""
  )
  return f"{step_batch_size(config)}{chunks}"
