"""A trained model from its workdir: the variables of one checkpoint, with the config and tokenizer
stored beside them. No optimiser is built: using a model needs only its variables."""

from __future__ import annotations

import dataclasses

import ml_collections
from flax import linen as nn

from jclip.data.tokenizer import Tokenizer
from jclip.runs.checkpoint import Checkpoints, Selected
from jclip.runs.tokenizers import tokenizer_from_bytes
from jclip.tasks import abstract_variables, build_model


@dataclasses.dataclass(frozen=True)
class RestoredModel:
  """One checkpoint of a workdir, ready to apply: `model.apply(variables, ...)`."""

  config: ml_collections.ConfigDict  # the run's own config, as stored with the checkpoint
  model: nn.Module
  variables: dict
  tokenizer: Tokenizer
  checkpoint: Selected  # which one, and why (for the printout)

  @property
  def step(self) -> int:
    return self.checkpoint.step


def restore_model(workdir: str, which: str | int | Selected | None = None) -> RestoredModel:
  """The model of a workdir's checkpoint: `which` is "best", "latest", a step number, or None (the
  best when the run kept one, else the latest); see Checkpoints.select. A Selected (from
  Checkpoints.select) restores that checkpoint: a caller can check its stored config first. The
  newest step, when unreadable, falls back to the newest readable one (its reason says so)."""
  checkpoints = Checkpoints(workdir, create=False)
  selected = which if isinstance(which, Selected) else checkpoints.select(which)

  def read(selected: Selected) -> RestoredModel:
    config = checkpoints.config(selected)
    model = build_model(config)
    variables = checkpoints.variables(abstract_variables(model, config), selected)
    tokenizer = tokenizer_from_bytes(config.tokenizer, checkpoints.tokenizer_bytes(selected))
    return RestoredModel(config, model, variables, tokenizer, selected)

  return checkpoints.newest_readable(read, selected)[1]
