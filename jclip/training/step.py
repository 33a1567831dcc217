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


def model_gradients(apply, loss_of, params, inputs: tuple, rng):
  """(gradients of the loss w.r.t. `params`, the loss's metrics, the model's updated collections):
  `apply(params, inputs, rng)` -> (outputs, updates) runs the model, `loss_of(outputs)` ->
  (share, metrics) scores its outputs."""
  def loss_fn(params):
    outputs, updates = apply(params, inputs, rng)
    share, metrics = loss_of(outputs)
    return share, (metrics, updates)

  grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(params)
  return grads, metrics, updates


def cached_model_gradients(apply, loss_of, params, inputs: tuple, rng, num_chunks: int):
  """What `model_gradients` computes, holding the activations of one chunk of the batch at a time
  (GradCache, Gao et al. 2021). The loss depends on the parameters only through the model's
  outputs, and each chunk's outputs only on that chunk's inputs, so by the chain rule

      d loss / d params = sum over chunks c of (d outputs_c / d params)^T . d loss / d outputs_c.

  (1) Every chunk's outputs, with no backward pass (so no activations kept). (2) The loss on all of
  them at once (every chunk's negatives are the whole batch), and its gradient w.r.t. the outputs.
  (3) Each chunk's forward pass again, now under jax.vjp, fed its slice of that gradient; the
  parameter gradients add up in the scan's carry.

  Every input is batch-major: its rows are split into `num_chunks` consecutive chunks (tokens
  [n*K, L] with K captions image by image split with their images). Every output is batch-major
  ([n_c, ...] per chunk, concatenated in chunk order) or a scalar that does not depend on the
  inputs (CLIP's logit scale): every chunk computes the same value, and its gradient is passed back
  through chunk 0 alone, so that it counts once. Chunk c draws its dropout masks from
  fold_in(rng, c) in both passes: the recomputed outputs are the ones the loss saw. BatchNorm
  normalises each chunk with the chunk's own statistics (as it does each device's rows without
  accumulation): the gradient is exact for that model, and the updated running statistics are
  averaged over the chunks.
  """
  chunks = tuple(x.reshape(num_chunks, -1, *x.shape[1:]) for x in inputs)
  index_k = jnp.arange(num_chunks)
  apply_chunk = lambda params, chunk, c: apply(params, chunk, jax.random.fold_in(rng, c))

  outputs_k, updates_k = lax.map(lambda xs: apply_chunk(params, *xs), (chunks, index_k))
  outputs = jax.tree.map(lambda y_k: y_k[0] if y_k.ndim == 1 else y_k.reshape(-1, *y_k.shape[2:]),
                         outputs_k)
  share, loss_vjp, metrics = jax.vjp(loss_of, outputs, has_aux=True)
  (d_outputs,) = loss_vjp(jnp.ones_like(share))
  d_outputs_k = jax.tree.map(
      lambda d, y_k: (jnp.zeros_like(y_k).at[0].set(d) if y_k.ndim == 1
                      else d.reshape(y_k.shape)), d_outputs, outputs_k)

  def accumulate(grads, xs):
    chunk, c, d_chunk_outputs = xs
    _, chunk_vjp, _ = jax.vjp(lambda p: apply_chunk(p, chunk, c), params, has_aux=True)
    (chunk_grads,) = chunk_vjp(d_chunk_outputs)
    return jax.tree.map(jnp.add, grads, chunk_grads), None

  grads, _ = lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params),
                      (chunks, index_k, d_outputs_k))
  # Chunk 0's values plus the mean change: what no chunk changed (a locked backbone's statistics)
  # stays bit for bit, where a plain mean of k equal floats may round.
  updates = jax.tree.map(lambda u_k: u_k[0] + jnp.mean(u_k - u_k[0], axis=0), updates_k)
  return grads, metrics, updates


def train_step(state, batch: dict, rng, *, task, learning_rate_fn, frozen=None,
               max_log_logit_scale: float | None = None, accum_steps: int = 1):
  """One optimiser step of `task` (jclip/tasks.py) on this device's batch, e.g.
  {"image": [b, H, W, 3], "tokens": [b, L], "label": [b]}.

  Randomness (dropout) is derived from (rng, step, device), never from process state, so a resumed
  run draws the same numbers as an uninterrupted one. `frozen` (a tree of bools like the params, or
  None) marks parameters that never train: they enter the loss behind stop_gradient, so XLA builds
  no backward pass into them (for a frozen text tower, none through the whole tower).
  `max_log_logit_scale` (CLIP) caps the temperature parameter t after the update.
  `accum_steps` > 1 runs the model on the batch in that many chunks of b / accum_steps rows, one
  at a time, for the gradient of the loss on the whole batch (`cached_model_gradients`). The
  step's global batch is read device-major, as without accumulation: device d's chunk c holds the
  pairs from (d * accum_steps + c) * b / accum_steps on, and the step equals one step over all of
  them at once (tests/test_step.py).
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS))
  mutable = ["batch_stats"] if state.batch_stats else []

  def apply(params, inputs, dropout_rng):
    if frozen is not None:
      params = jax.tree.map(lambda p, f: lax.stop_gradient(p) if f else p, params, frozen)
    return state.apply_fn(dict(state.variables, params=params), *inputs, train=True,
                          rngs={"dropout": dropout_rng}, mutable=mutable)

  inputs = tuple(batch[field] for field in task.input_fields)
  loss_of = lambda outputs: task.loss(outputs, batch, AXIS)
  if accum_steps == 1:
    grads, metrics, updates = model_gradients(apply, loss_of, state.params, inputs, rng)
  else:
    grads, metrics, updates = cached_model_gradients(apply, loss_of, state.params, inputs, rng,
                                                     accum_steps)
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
                           max_log_logit_scale=max_log_logit_scale,
                           accum_steps=config.get("accum_steps", 1))
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
