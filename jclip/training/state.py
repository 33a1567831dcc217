"""The train state and its optimiser: AdamW with warmup + cosine decay, clipping, a NaN guard."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm's running statistics (an empty dict without BatchNorm)."""

  batch_stats: Any = flax.core.FrozenDict()

  @property
  def variables(self) -> dict:
    """The `variables` argument of `model.apply`."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to end_lr_ratio * peak at num_steps."""
  optim = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
      decay_steps=config.num_steps, end_value=optim.learning_rate * optim.end_lr_ratio)


def weight_decay_mask(params) -> Any:
  """Decay weight matrices and embedding tables only; biases, norm scales and the temperature are
  left alone, as in CLIP and BERT. Biases are told by name, not rank: the attention's query, key
  and value biases are [heads, head_dim] matrices."""
  def decayed(path, p):
    return jnp.ndim(p) >= 2 and getattr(path[-1], "key", None) != "bias"
  return jax.tree_util.tree_map_with_path(decayed, params)


def param_groups(params) -> Any:
  """"text_backbone" for CLIP's text tower except its projection (the part that a pretrained or
  classifier checkpoint provides), "default" for everything else."""
  def group(path, _):
    keys = [getattr(key, "key", None) for key in path]
    return ("text_backbone" if keys[0] == "text_encoder" and keys[1:2] != ["proj"]
            else "default")
  return jax.tree_util.tree_map_with_path(group, params)


def frozen_mask(params, config: ml_collections.ConfigDict) -> Any:
  """True for the parameters that never train (the text backbone when
  optim.text_backbone_lr_scale is 0), or None when everything trains."""
  if config.optim.text_backbone_lr_scale != 0.0:
    return None
  return jax.tree.map(lambda group: group == "text_backbone", param_groups(params))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping, then AdamW; the text backbone's learning rate is optim.text_backbone_lr_scale times
  the schedule's (0 freezes it: its gradients are zeroed before clipping, so they neither count
  in the global norm nor decay the weights)."""
  optim = config.optim
  schedule = learning_rate_schedule(config)
  adamw = lambda learning_rate: optax.adamw(
      learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
      mask=weight_decay_mask)
  clip = optax.clip_by_global_norm(optim.grad_clip_norm)
  scale = optim.text_backbone_lr_scale
  if scale == 1.0:
    tx = optax.chain(clip, adamw(schedule))
  elif scale == 0.0:
    tx = optax.chain(optax.freeze(lambda params: frozen_mask(params, config)), clip,
                     optax.partition({"default": adamw(schedule),
                                      "text_backbone": optax.set_to_zero()}, param_groups))
  else:
    tx = optax.chain(clip, optax.partition(
        {"default": adamw(schedule), "text_backbone": adamw(lambda step: scale * schedule(step))},
        param_groups))
  # A non-finite gradient skips the update instead of poisoning the weights; after
  # max_consecutive_nonfinite in a row the NaN goes through and the loop stops with an error.
  return optax.apply_if_finite(tx, max_consecutive_errors=optim.max_consecutive_nonfinite)


def create_train_state(model, config: ml_collections.ConfigDict, variables: dict):
  """The train state of fresh `variables` (from model.init): step 0, a new optimiser state."""
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables.get("batch_stats", flax.core.FrozenDict()),
                           tx=make_optimizer(config))
