"""The production train step (jclip/training/step.py) on 8 devices equals one plain step on one.

The single-device reference is written here, not borrowed from step.py: jax.grad of the task's loss
with axis_name=None on the concatenated global batch, then TrainState.apply_gradients, inside one
jax.jit and no pmap. (Calling train_step under a pmap over one device would share the code under
test — the psum, the pmean, the grad_norm line — with the reference, so a bug there could cancel.)
What the 8-device step must reproduce, for every device's copy:

  - the parameters and the whole optimiser state (AdamW's moments, its step count, the NaN guard's
    counters) after one step: the psum of the devices' gradients is the global gradient;
  - `grad_norm`, the global norm of that gradient, and the global `loss`;
  - with BatchNorm, what one device computing BatchNorm per group of B/P examples computes (see
    `test_batchnorm_step_equals_single_device_with_per_device_groups`).

Dropout is off (text dropout_rate 0), so both steps compute the same function. The learning rate
has no warm-up (warm-up starts at 0, and a step at learning rate 0 would compare unmoved weights)
and clipping is off: a clipped gradient has the same direction at any scale, so with clipping a
gradient 8x too small (a pmean instead of the psum) would change nothing but grad_norm. Adam's eps
is 1e-3, not 1e-6: some gradients are 0 in exact arithmetic (an attention key's bias shifts a whole
row of logits, which softmax ignores), and Adam divides their float noise (1e-10) by its own size,
so with a tiny eps both steps would move those weights by +-lr * O(1) in unrelated directions.

Gradient accumulation (config.accum_steps = k, jclip/training/step.py's AccumulatingStep):
one step over k chunks of batch_size pairs must equal the same single-device step on all k *
batch_size pairs at once, on 8 devices and on 1. The global batch is read in device-major order:
device d holds pairs d*k*b ... (d+1)*k*b - 1 (b = batch_size / devices), its chunk c the b of them
from d*k*b + c*b on, as the input pipeline lays them out. Where BatchNorm or dropout make the model
depend on how the batch is split, the reference runs the model per group of b (one group per
device and chunk), each with the dropout key the step derives for that chunk.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jclip import tasks
from jclip.training.state import init_state
from jclip.training.step import make_p_train_step, replicate

NUM_DEVICES = 8
LOCAL_BATCH = 2
RTOL, ATOL = 1e-5, 1e-6


def _config(
  task="clip",
  norm="group",
  num_devices=NUM_DEVICES,
  accum_steps=1,
  dropout=0.0,
  captions_per_image=1,
  loss="clip",
):
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  config.evals = ml_collections.ConfigDict()
  config.best_metric = None
  config.batch_size = num_devices * LOCAL_BATCH
  config.accum_steps = accum_steps
  config.data.captions_per_image = captions_per_image
  config.model.text.dropout_rate = dropout
  config.model.image.update(norm=norm, widths=(8,), depths=(1,))
  config.optim.warmup_steps = 0
  config.optim.grad_clip_norm = 1e6
  config.optim.eps = 1e-3
  config.task = task
  config.loss = loss
  if task != "clip":
    config.model.num_classes = 5
  return config


def _global_batch(config):
  """A random batch of one optimiser step (accum_steps * batch_size pairs, K captions each): images,
  tokens with padding (id 0) after 3 to 12 real tokens, labels."""
  rng = np.random.default_rng(0)
  n, size = config.accum_steps * config.batch_size, config.data.image_size
  length, num_texts = config.data.max_text_len, n * config.data.captions_per_image
  lengths = rng.integers(3, length + 1, size=num_texts)
  tokens = rng.integers(1, config.tokenizer.vocab_size, size=(num_texts, length))
  tokens = np.where(np.arange(length)[None] < lengths[:, None], tokens, 0).astype(np.int32)
  return {
    "image": rng.normal(size=(n, size, size, 3)).astype(np.float32),
    "tokens": tokens,
    "label": rng.integers(0, 5, size=n).astype(np.int32),
  }


def _shard(batch, num_devices):
  return {k: v.reshape(num_devices, -1, *v.shape[1:]) for k, v in batch.items()}


def _group_dropout_keys(key, num_devices, accum_steps):
  """The dropout key of each group of the batch, in batch order, derived as train_step documents:
  device d draws from fold_in(fold_in(key, step), d), its chunk c (with accum_steps > 1) from
  fold_in(that, c). The step is 0."""
  keys = []
  for device in range(num_devices):
    device_key = jax.random.fold_in(jax.random.fold_in(key, 0), device)
    keys += (
      [jax.random.fold_in(device_key, c) for c in range(accum_steps)]
      if accum_steps > 1
      else [device_key]
    )
  return jnp.stack(keys)


def _single_device_step(state, batch, task, dropout_keys_G):
  """One optimiser step of `task` on the whole `batch`, on one device, without collectives.

  The model runs on the batch split into G = len(dropout_keys_G) consecutive groups, vmapped:
  BatchNorm normalises each group with its own statistics, group g draws its dropout masks from
  dropout_keys_G[g]; nothing else depends on the split. The loss scores the outputs of all N
  examples together. Returns (new state, loss, grad_norm).
  """
  mutable = ["batch_stats"] if state.batch_stats else []
  num_groups = len(dropout_keys_G)
  grouped = {f: batch[f].reshape(num_groups, -1, *batch[f].shape[1:]) for f in task.input_fields}

  def loss_fn(params):
    apply = lambda key, inputs: state.apply_fn(
      dict(state.variables, params=params),
      **inputs,
      train=True,
      rngs={"dropout": key},
      mutable=mutable,
    )
    outputs, updates = jax.vmap(apply)(dropout_keys_G, grouped)
    # Each output has a group axis: a batch-major one is concatenated over the groups, a scalar
    # (CLIP's logit scale) is the same in every group.
    outputs = jax.tree.map(lambda y: y[0] if y.ndim == 1 else y.reshape(-1, *y.shape[2:]), outputs)
    loss, _ = task.loss(outputs, batch, None)
    return loss, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # Running statistics: the average of the groups' updated statistics (all groups start from the
  # same running values, so this is the running update with the groups' mean batch statistics).
  batch_stats = (
    jax.tree.map(lambda u: jnp.mean(u, axis=0), updates["batch_stats"])
    if mutable
    else state.batch_stats
  )
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return new_state, loss, optax.tree.norm(grads)


def _both_steps(config, num_devices=NUM_DEVICES, num_groups=None):
  """(state before, the `num_devices`-device state after, its metrics, single-device results) for
  one step. The reference runs the model in `num_groups` groups (default: one per device and
  chunk), with the step's dropout keys."""
  _, state = init_state(config)
  batch = _global_batch(config)
  task = tasks.get_task(config)
  key = jax.random.key(0)
  keys_G = _group_dropout_keys(key, num_devices, config.accum_steps)
  if num_groups is not None:
    keys_G = keys_G[:num_groups]
  reference = jax.jit(lambda s, b: _single_device_step(s, b, task, keys_G))(state, batch)
  assert jax.local_device_count() == NUM_DEVICES, "conftest must force 8 CPU devices"
  p_step = make_p_train_step(config, state.params)
  # num_devices copies of the state (host arrays: pmap puts each on its device).
  copies = jax.tree.map(lambda x: np.stack([np.asarray(x)] * num_devices), state)
  p_state, p_metrics = p_step(copies, _shard(batch, num_devices), key)
  return state, jax.device_get(p_state), jax.device_get(p_metrics), jax.device_get(reference)


def _assert_every_copy_equals(replicated_tree, tree, what):
  """Every device's copy (leading axis) of `replicated_tree` equals `tree`, leaf by leaf."""
  paths_and_copies = jax.tree_util.tree_leaves_with_path(replicated_tree)
  leaves = jax.tree.leaves(tree)
  assert len(paths_and_copies) == len(leaves) > 0, what
  for (path, copies), want in zip(paths_and_copies, leaves, strict=True):
    copies = np.asarray(copies)
    assert copies.shape[1:] == np.shape(want), (what, path)
    for device, copy in enumerate(copies):
      np.testing.assert_allclose(
        copy,
        want,
        rtol=RTOL,
        atol=ATOL,
        err_msg=f"{what}{jax.tree_util.keystr(path)} on device {device}",
      )


def _assert_step_matches(before, p_state, p_metrics, reference):
  ref_state, ref_loss, ref_grad_norm = reference
  # The step did something: otherwise equal parameters would prove nothing.
  moved = [
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(ref_state.params), strict=True)
  ]
  assert sum(moved) > len(moved) // 2, f"only {sum(moved)} of {len(moved)} leaves moved"
  _assert_every_copy_equals(p_state.params, ref_state.params, "params")
  _assert_every_copy_equals(p_state.opt_state, ref_state.opt_state, "opt_state")
  num_devices = len(p_state.step)
  np.testing.assert_array_equal(p_state.step, np.full(num_devices, 1))
  np.testing.assert_allclose(p_metrics["grad_norm"], np.full(num_devices, ref_grad_norm), rtol=RTOL)
  np.testing.assert_allclose(p_metrics["loss"], np.full(num_devices, ref_loss), rtol=RTOL)


@pytest.mark.parametrize(
  "task,loss", [("clip", "clip"), ("clip", "siglip"), ("text_classifier", "clip")]
)
def test_pmap_train_step_equals_single_device_step(task, loss):
  """CLIP with the gathered softmax loss and with SigLIP's ring, and a classifier (a per-example
  loss), with GroupNorm; the image classifier is the BatchNorm test's."""
  config = _config(task, loss=loss)
  before, p_state, p_metrics, reference = _both_steps(config, num_groups=1)
  assert not before.batch_stats  # GroupNorm: nothing depends on how the batch is split
  _assert_step_matches(before, p_state, p_metrics, reference)
  if loss == "siglip":  # the bias is a trained parameter, starting at the paper's -10
    assert before.params["logit_bias"] == -10.0
    assert not np.allclose(p_state.params["logit_bias"], -10.0)
    np.testing.assert_allclose(p_metrics["logit_bias"], np.full(NUM_DEVICES, -10.0))


@pytest.mark.parametrize("task", ["clip", "image_classifier"])
def test_batchnorm_step_equals_single_device_with_per_device_groups(task):
  """BatchNorm normalises each device's B/P examples with their own mean and variance (it is not
  synchronised across devices), so the 8-device step is one device's step on the global batch
  with BatchNorm applied per group of B/P examples ("ghost" batches), not on all N at once; that
  is what must match, parameters and optimiser state included. The running statistics are the
  pmean of the devices' updates: the mean of the groups' means and of the groups' variances. Where
  the inputs are the same (the first BatchNorm), the former is the whole batch's mean, the latter
  is below the whole batch's variance."""
  config = _config(task, norm="batch")
  before, p_state, p_metrics, reference = _both_steps(config)
  assert before.batch_stats
  _assert_step_matches(before, p_state, p_metrics, reference)
  _assert_every_copy_equals(p_state.batch_stats, reference[0].batch_stats, "batch_stats")

  # Against BatchNorm on the whole batch at once, where both see the same inputs (the first
  # BatchNorm, after the stem; deeper layers see differently normalised inputs): the same running
  # means; running variances smaller by the variance of the devices' means (the law of total
  # variance, for BatchNorm's biased variance), which is positive in every channel.
  batch, model_inputs = _global_batch(config), tasks.model_inputs(config)
  _, whole = jax.jit(
    lambda: before.apply_fn(
      before.variables, **{f: batch[f] for f in model_inputs}, train=True, mutable=["batch_stats"]
    )
  )()
  tower = "image_encoder" if task == "clip" else "encoder"
  got = p_state.batch_stats[tower]["stem_norm"]
  whole = jax.device_get(whole["batch_stats"][tower]["stem_norm"])
  np.testing.assert_allclose(got["mean"][0], whole["mean"], rtol=RTOL, atol=ATOL)
  assert np.all(whole["var"] - got["var"][0] > 1e-6), whole["var"] - got["var"][0]


@pytest.mark.parametrize(
  "task, num_devices, accum_steps, captions_per_image, dropout, norm, loss",
  [
    ("clip", NUM_DEVICES, 2, 2, 0.1, "group", "clip"),
    ("clip", 1, 3, 1, 0.0, "batch", "clip"),
    ("clip", NUM_DEVICES, 2, 1, 0.1, "group", "siglip"),  # two scalars: scale and bias
    ("image_classifier", NUM_DEVICES, 2, 1, 0.0, "batch", "clip"),
    ("text_classifier", 1, 3, 1, 0.1, "group", "clip"),
  ],
)
def test_accumulated_step_equals_one_step_over_the_whole_batch(
  task, num_devices, accum_steps, captions_per_image, dropout, norm, loss
):
  """accum_steps chunks of batch_size pairs: the same parameters, optimiser state, loss and
  gradient norm as one step over all accum_steps * batch_size pairs, the loss scoring them all
  together. CLIP's logit scale, computed by every chunk, must count once: counted once per chunk,
  its gradient (and Adam's first moment) would be accum_steps times too large. With dropout, each
  chunk's recomputed forward pass must draw the masks of its first pass; with BatchNorm, the
  running statistics are the mean over the chunks of every device."""
  config = _config(task, norm, num_devices, accum_steps, dropout, captions_per_image, loss)
  before, p_state, p_metrics, reference = _both_steps(config, num_devices)
  _assert_step_matches(before, p_state, p_metrics, reference)
  if norm == "batch":
    _assert_every_copy_equals(p_state.batch_stats, reference[0].batch_stats, "batch_stats")


def test_temperature_pushed_past_the_clamp_comes_back():
  """t above ln(max_logit_scale) gets zero gradient through the forward clamp; the step clamps the
  parameter after the update (as CLIP's reference does), so t returns to the clamp and then moves
  below it on a random batch, where a lower scale lowers the loss."""
  config = _config()
  _, state = init_state(config)
  cap = np.log(config.model.max_logit_scale)
  state = state.replace(params={**state.params, "log_logit_scale": jnp.float32(cap + 0.5)})
  p_step = make_p_train_step(config, state.params)
  replicated, batch = replicate(state), _shard(_global_batch(config), NUM_DEVICES)
  path = []
  for _ in range(3):
    replicated, _ = p_step(replicated, batch, jax.random.key(0))
    path.append(float(jax.device_get(replicated.params["log_logit_scale"])[0]))
  assert path[0] == pytest.approx(cap), path
  assert path[2] < path[1] < cap - 1e-4, path
