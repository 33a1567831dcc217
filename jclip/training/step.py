"""The data-parallel train step, to be wrapped in `jax.pmap(..., axis_name=AXIS)`.

Every device holds the same TrainState and its own slice of the global batch. The loss functions
return each device's share of the global loss (see jclip/losses.py), so the global gradient is the
psum of the devices' gradients; every device then applies the same update and stays in sync.

With config.accum_steps = k > 1 a step trains on k chunks of batch_size pairs, holding one chunk's
activations at a time, with the gradient of the loss over all of them (GradCache, Gao et al. 2021:
`output_cotangents`, then `chunk_gradients` for each chunk). The host runs it as k + 2 pmap'd
programs (`AccumulatingStep`) rather than as one with a lax.scan over the chunks: on XLA's CPU
backend the convolutions' backward pass inside a loop body runs far slower than at the top of a
program (bench/train_step.py, configs/flickr8k.py, 2 chunks of 128 on 2 cores: 3.2 pairs/s with the
scan, 73.4 with the host loop).
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
from jclip.training.state import (
  apply_trained_gradients,
  frozen_mask,
  learning_rate_schedule,
  trained_params,
  updated_ema,
  with_trained,
)

AXIS = "batch"


def pmap_sharding(num_devices: int) -> NamedSharding:
  """pmap's own layout of arrays with one row per local device (the first `num_devices`): inputs
  already laid out so are read in place, with no copy and no second compilation of the step."""
  devices = jax.local_devices()[:num_devices]
  return NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree):
  """One copy of `tree` per local device, laid out exactly as pmap lays out its own outputs (a
  NamedSharding over the local devices along AXIS); any other layout would make the second step
  compile the train step a second time."""
  num_devices = jax.local_device_count()
  return jax.device_put(
    jax.tree.map(lambda x: np.stack([np.asarray(x)] * num_devices), tree),
    pmap_sharding(num_devices),
  )


def unreplicate(tree):
  """The first local device's copy, as host arrays. Read from that device's own shard ([1, ...]):
  indexing the global array, x[0], would compile a gather for every distinct leaf shape."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def model_gradients(apply, loss_of, params, inputs: dict, rng):
  """(gradients of the loss w.r.t. `params`, the loss's metrics, the model's updated collections):
  `apply(params, inputs, rng)` -> (outputs, updates) runs the model, `loss_of(outputs)` ->
  (share, metrics) scores its outputs."""

  def loss_fn(params):
    outputs, updates = apply(params, inputs, rng)
    share, metrics = loss_of(outputs)
    return share, (metrics, updates)

  grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(params)
  return grads, metrics, updates


def _chunked(x, num_chunks: int):
  """[n, ...] -> [num_chunks, n / num_chunks, ...]: consecutive rows per chunk."""
  return x.reshape(num_chunks, -1, *x.shape[1:])


def output_cotangents(apply, loss_of, params, inputs: dict, rng, num_chunks: int):
  """The gradient of the loss w.r.t. the model's outputs on the whole batch, computed chunk by
  chunk with no activations kept: the first two passes of GradCache (Gao et al. 2021).

  The loss depends on the parameters only through the model's outputs, and each chunk's outputs
  only on that chunk's inputs, so by the chain rule

      d loss / d params = sum over chunks c of (d outputs_c / d params)^T . d loss / d outputs_c,

  the large batch's gradient, exactly. (1) Every chunk's outputs, with no backward pass (a lax.map:
  XLA holds one chunk's activations at a time). (2) The loss on all of them at once (every chunk's
  negatives are the whole batch) and its gradient w.r.t. the outputs. `chunk_gradients` is pass (3).

  `apply(params, inputs, rng)` -> (outputs, updates) and `loss_of` are as in `model_gradients`.
  Every input (a dict of arrays) is batch-major: its rows are split into `num_chunks` consecutive
  chunks (tokens [n*K, L] with K captions image by image split with their images). Every output is
  batch-major ([n_c, ...] per chunk, concatenated in chunk order) or a scalar that does not depend
  on the inputs (CLIP's logit scale): every chunk computes the same value, and its cotangent goes to
  chunk 0 alone, so that it counts once. Chunk c draws its dropout masks from fold_in(rng, c).
  BatchNorm normalises each chunk with the chunk's own statistics (as it does each device's rows
  without accumulation): the gradient is exact for that model.

  Returns (the cotangents, each output's as [num_chunks, ...] like its chunks' outputs; the loss's
  metrics; the updated collections, averaged over the chunks).
  """
  chunks = jax.tree.map(lambda x: _chunked(x, num_chunks), inputs)
  outputs_A, updates_A = lax.map(
    lambda xs: apply(params, xs[0], jax.random.fold_in(rng, xs[1])),
    (chunks, jnp.arange(num_chunks)),
  )
  outputs = jax.tree.map(
    lambda y_A: y_A[0] if y_A.ndim == 1 else y_A.reshape(-1, *y_A.shape[2:]), outputs_A
  )
  share, loss_vjp, metrics = jax.vjp(loss_of, outputs, has_aux=True)
  (d_outputs,) = loss_vjp(jnp.ones_like(share))
  d_outputs_A = jax.tree.map(
    lambda d, y_A: jnp.zeros_like(y_A).at[0].set(d) if y_A.ndim == 1 else _chunked(d, num_chunks),
    d_outputs,
    outputs_A,
  )
  # Chunk 0's values plus the mean change: what no chunk changed (a locked backbone's statistics)
  # stays bit for bit, where a plain mean of k equal floats may round.
  updates = jax.tree.map(lambda u_A: u_A[0] + jnp.mean(u_A - u_A[:1], axis=0), updates_A)
  return d_outputs_A, metrics, updates


def chunk_gradients(apply, params, inputs: dict, rng, d_outputs_A, chunk, num_chunks: int):
  """GradCache's third pass for one chunk: its forward pass again, now under jax.vjp, fed its
  slice of `output_cotangents`' cotangents: (d outputs_c / d params)^T . d loss / d outputs_c.
  Summed over the chunks, the gradient of the loss on the whole batch. Same dropout key as pass
  (1), fold_in(rng, chunk): the recomputed outputs are the ones the loss saw."""
  chunk_inputs = jax.tree.map(
    lambda x: lax.dynamic_index_in_dim(_chunked(x, num_chunks), chunk, keepdims=False), inputs
  )
  d_chunk_outputs = jax.tree.map(
    lambda d_A: lax.dynamic_index_in_dim(d_A, chunk, keepdims=False), d_outputs_A
  )
  _, chunk_vjp, _ = jax.vjp(
    lambda params: apply(params, chunk_inputs, jax.random.fold_in(rng, chunk)), params, has_aux=True
  )
  return chunk_vjp(d_chunk_outputs)[0]


def _device_rng(rng, step):
  """This device's randomness at `step`: a function of (rng, step, device), never of process
  state, so a resumed run draws the same numbers as an uninterrupted one."""
  return jax.random.fold_in(jax.random.fold_in(rng, step), lax.axis_index(AXIS))


def _model(state, frozen):
  """The model as `apply(trained, inputs, dropout_rng)` -> (outputs, updated collections), in
  training mode, a function of the trained parameters only (`trained_params`); `inputs` holds the
  batch fields it reads, by name. `frozen` (a tree of bools like the params, or None) marks the
  parameters that never train: they enter as constants, so XLA builds no backward pass into them
  (for a frozen text tower, none through the whole tower) and the step neither sums, clips nor
  updates them."""
  mutable = ["batch_stats"] if state.batch_stats else []

  def apply(trained, inputs, dropout_rng):
    return state.apply_fn(
      dict(state.variables, params=with_trained(state.params, trained, frozen)),
      **inputs,
      train=True,
      rngs={"dropout": dropout_rng},
      mutable=mutable,
    )

  return apply


def _inputs(batch: dict, input_names: tuple[str, ...]) -> dict:
  return {name: batch[name] for name in input_names}


def _update(
  state, grads, metrics, updates, *, frozen, learning_rate_fn, max_log_logit_scale, ema_decay
):
  """The optimiser step from this device's gradients of the trained parameters (of its share of
  the loss) and the model's updated collections; the loss's metrics plus the learning rate, the
  global gradient norm and the updates skipped so far."""
  grads = lax.psum(grads, AXIS)
  # BatchNorm statistics are computed per device; averaging keeps the replicas identical. The mean
  # is taken of the changes: what no device changed (a locked backbone's statistics) stays bit for
  # bit, where a mean of P equal floats may round.
  batch_stats = (
    jax.tree.map(
      lambda old, new: old + lax.pmean(new - old, AXIS), state.batch_stats, updates["batch_stats"]
    )
    if state.batch_stats
    else state.batch_stats
  )
  new_state = apply_trained_gradients(state, grads, frozen, batch_stats=batch_stats)
  if max_log_logit_scale is not None:
    # As in CLIP's reference code, the parameter itself is clamped after the update: the forward
    # clamp alone gives t zero gradient beyond it, so a t that overshoots could never come back.
    new_state = new_state.replace(
      params={
        **new_state.params,
        "log_logit_scale": jnp.minimum(new_state.params["log_logit_scale"], max_log_logit_scale),
      }
    )
  new_state = updated_ema(new_state, frozen, ema_decay)  # of the parameters as clamped
  metrics = dict(
    metrics,
    learning_rate=learning_rate_fn(state.step),
    grad_norm=jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))),
    # Updates that optax.apply_if_finite skipped so far (a NaN or inf gradient).
    skipped_updates=new_state.opt_state.total_notfinite,
  )
  if "log_logit_scale" in state.params:  # CLIP: log t as well as exp(t)
    metrics["temperature_log"] = state.params["log_logit_scale"]
  return new_state, metrics


def train_step(
  state,
  batch: dict,
  rng,
  *,
  loss,
  input_names,
  learning_rate_fn,
  frozen=None,
  max_log_logit_scale: float | None = None,
  ema_decay: float = 0.0,
):
  """One optimiser step on this device's batch, e.g. {"image": [b, H, W, 3], "tokens": [b, L],
  "label": [b]}: the model reads the fields `input_names` (jclip.tasks.model_inputs) and the
  task's `loss(outputs, batch, axis_name)` scores its outputs. Dropout draws from `_device_rng`;
  `frozen` is as in `_model`; `max_log_logit_scale` (CLIP) caps the temperature parameter t after
  the update."""
  grads, metrics, updates = model_gradients(
    _model(state, frozen),
    lambda outputs: loss(outputs, batch, AXIS),
    trained_params(state.params, frozen),
    _inputs(batch, input_names),
    _device_rng(rng, state.step),
  )
  return _update(
    state,
    grads,
    metrics,
    updates,
    frozen=frozen,
    learning_rate_fn=learning_rate_fn,
    max_log_logit_scale=max_log_logit_scale,
    ema_decay=ema_decay,
  )


def _accumulation_start(state, batch, rng, *, loss, input_names, frozen, num_chunks):
  """`output_cotangents` on this device, and the sum of the chunks' gradients, zero so far."""
  trained = trained_params(state.params, frozen)
  d_outputs_A, metrics, updates = output_cotangents(
    _model(state, frozen),
    lambda outputs: loss(outputs, batch, AXIS),
    trained,
    _inputs(batch, input_names),
    _device_rng(rng, state.step),
    num_chunks,
  )
  return d_outputs_A, metrics, updates, jax.tree.map(jnp.zeros_like, trained)


def _accumulate_chunk(
  state, batch, rng, d_outputs_A, chunk, grads, *, input_names, frozen, num_chunks
):
  """`grads` plus chunk `chunk`'s `chunk_gradients` on this device."""
  chunk_grads = chunk_gradients(
    _model(state, frozen),
    trained_params(state.params, frozen),
    _inputs(batch, input_names),
    _device_rng(rng, state.step),
    d_outputs_A,
    chunk,
    num_chunks,
  )
  return jax.tree.map(jnp.add, grads, chunk_grads)


class AccumulatingStep:
  """The train step with accum_steps = k > 1, called like the pmap'd `train_step`: (replicated
  state, batch, rng) -> (state, metrics), the state donated. Each device's batch holds k chunks;
  the host runs `output_cotangents` on all of them, `chunk_gradients` once per chunk, then the
  update of `train_step`, each a pmap'd program compiled once.

  The step's global batch is read device-major, as without accumulation: device d's chunk c holds
  the pairs from (d * k + c) * b on (b = batch_size / devices), and the step equals one step over
  all of them at once (tests/test_step.py). Chunk c of device d draws its dropout masks from
  fold_in(fold_in(fold_in(rng, step), d), c).
  """

  def __init__(self, num_chunks: int, *, loss, input_names, frozen, update):
    self.num_chunks = num_chunks
    model = dict(input_names=input_names, frozen=frozen, num_chunks=num_chunks)
    self._start = jax.pmap(
      functools.partial(_accumulation_start, loss=loss, **model),
      axis_name=AXIS,
      in_axes=(0, 0, None),
    )
    self._accumulate = jax.pmap(
      functools.partial(_accumulate_chunk, **model),
      axis_name=AXIS,
      in_axes=(0, 0, None, 0, None, 0),
      donate_argnums=(5,),
    )
    self._update = jax.pmap(update, axis_name=AXIS, donate_argnums=(0,))

  def __call__(self, state, batch: dict, rng):
    # On the devices once, not once per program.
    batch = jax.device_put(batch, pmap_sharding(len(jax.tree.leaves(batch)[0])))
    d_outputs_A, metrics, updates, grads = self._start(state, batch, rng)
    for chunk in range(self.num_chunks):
      grads = self._accumulate(state, batch, rng, d_outputs_A, np.int32(chunk), grads)
    return self._update(state, grads, metrics, updates)

  def compiled_programs(self, state, batch: dict, rng) -> list:
    """The step's compiled programs (for XLA's cost and memory analyses)."""
    d_outputs_A, metrics, updates, grads = jax.eval_shape(self._start, state, batch, rng)
    return [
      self._start.lower(state, batch, rng).compile(),
      self._accumulate.lower(state, batch, rng, d_outputs_A, np.int32(0), grads).compile(),
      self._update.lower(state, grads, metrics, updates).compile(),
    ]


def make_p_train_step(config, params):
  """The train step of `config`'s task: (replicated state, batch, rng) -> (state, metrics); pmap'd
  `train_step`, or an `AccumulatingStep` with config.accum_steps > 1. The state argument is
  donated: its buffers are reused for the new state."""
  frozen = frozen_mask(params, config)
  model = dict(
    loss=tasks.get_task(config).loss, input_names=tasks.model_inputs(config), frozen=frozen
  )
  optimiser = dict(
    learning_rate_fn=learning_rate_schedule(config),
    max_log_logit_scale=(
      math.log(config.model.max_logit_scale) if "log_logit_scale" in params else None
    ),
    ema_decay=config.optim.ema_decay,
  )
  if config.accum_steps > 1:
    return AccumulatingStep(
      config.accum_steps, **model, update=functools.partial(_update, frozen=frozen, **optimiser)
    )
  step = functools.partial(train_step, **model, **optimiser)
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))


def compiled_programs(p_train_step, state, batch: dict, rng) -> list:
  """The compiled programs that one call of `make_p_train_step`'s result runs (for XLA's cost and
  memory analyses): one, or an `AccumulatingStep`'s three."""
  if isinstance(p_train_step, AccumulatingStep):
    return p_train_step.compiled_programs(state, batch, rng)
  return [p_train_step.lower(state, batch, rng).compile()]
