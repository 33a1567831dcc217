"""The data-parallel train step, to be wrapped in `jax.pmap(..., axis_name=AXIS)`.

Every device holds the same TrainState and its own slice of the global batch. The loss functions
return each device's share of the global loss (see jclip/losses.py), so the global gradient is the
psum of the devices' gradients; every device then applies the same update and stays in sync.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jclip import tasks
from jclip.training.state import frozen_mask, learning_rate_schedule


AXIS = "batch"


def replicate(tree):
  """One copy of `tree` per local device, laid out exactly as pmap lays out its own outputs (a
  NamedSharding over the local devices along AXIS); any other layout would make the second step
  compile the train step a second time."""
  devices = jax.local_devices()
  sharding = NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))
  return jax.device_put(jax.tree.map(lambda x: np.stack([np.asarray(x)] * len(devices)), tree),
                        sharding)


def unreplicate(tree):
  """The first local device's copy, as host arrays. Read from that device's own shard ([1, ...]):
  indexing the global array, x[0], would compile a gather for every distinct leaf shape."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def train_step(state, batch: dict, rng, *, task, learning_rate_fn, frozen=None,
               max_log_logit_scale: float | None = None):
  """One optimiser step of `task` (jclip/tasks.py) on this device's batch, e.g.
  {"image": [b, H, W, 3], "tokens": [b, L], "label": [b]}.

  Randomness (dropout) is derived from (rng, step, device), never from process state, so a resumed
  run draws the same numbers as an uninterrupted one. `frozen` (a tree of bools like the params, or
  None) marks parameters that never train: they enter the loss behind stop_gradient, so XLA builds
  no backward pass into them (for a frozen text tower, none through the whole tower).
  `max_log_logit_scale` (CLIP) caps the temperature parameter t after the update.
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS))
  mutable = ["batch_stats"] if state.batch_stats else []

  def loss_fn(params):
    if frozen is not None:
      params = jax.tree.map(lambda p, f: lax.stop_gradient(p) if f else p, params, frozen)
    variables = dict(state.variables, params=params)
    outputs, updates = state.apply_fn(
        variables, *(batch[field] for field in task.input_fields), train=True,
        rngs={"dropout": rng}, mutable=mutable)
    share, metrics = task.loss(outputs, batch, AXIS)
    return share, (metrics, updates)

  grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = lax.psum(grads, AXIS)
  # BatchNorm statistics are computed per device; averaging keeps the replicas identical.
  batch_stats = lax.pmean(updates["batch_stats"], AXIS) if mutable else state.batch_stats
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if max_log_logit_scale is not None:
    # As in CLIP's reference code, the parameter itself is clamped after the update: the forward
    # clamp alone gives t zero gradient beyond it, so a t that overshoots could never come back.
    new_state = new_state.replace(params={**new_state.params, "log_logit_scale": jnp.minimum(
        new_state.params["log_logit_scale"], max_log_logit_scale)})
  metrics = dict(metrics, learning_rate=learning_rate_fn(state.step),
                 grad_norm=jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))),
                 # Updates that optax.apply_if_finite skipped so far (a NaN or inf gradient).
                 skipped_updates=new_state.opt_state.total_notfinite)
  if "log_logit_scale" in state.params:  # CLIP: log t as well as exp(t)
    metrics["temperature_log"] = state.params["log_logit_scale"]
  return new_state, metrics


def make_p_train_step(config, params):
  """The pmap'd train step of `config`'s task: (replicated state, batch, rng) -> (state, metrics).
  The state argument is donated: its buffers are reused for the new state."""
  max_log_logit_scale = (math.log(config.model.max_logit_scale) if "log_logit_scale" in params
                         else None)
  step = functools.partial(train_step, task=tasks.get_task(config),
                           learning_rate_fn=learning_rate_schedule(config),
                           frozen=frozen_mask(params, config),
                           max_log_logit_scale=max_log_logit_scale)
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
