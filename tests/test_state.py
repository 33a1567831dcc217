"""The optimiser: weight decay only on matrices, and each backbone's own learning rate (lower, or
locked) for pretrained towers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jclip.tasks import abstract_variables, build_model
from jclip.training.state import (
  frozen_mask,
  learning_rate_schedule,
  make_optimizer,
  param_groups,
  trained_params,
  weight_decay_mask,
  with_trained,
)


def _params():
  """A CLIP-shaped tree: text backbone, text projection, image tower, temperature."""
  rng = np.random.default_rng(0)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
    "text_encoder": {
      "block1": {"kernel": leaf(4, 4), "bias": leaf(4)},
      "proj": {"kernel": leaf(4, 3), "bias": leaf(3)},
    },
    "image_encoder": {"stem": {"kernel": leaf(2, 4)}, "proj": {"kernel": leaf(4, 3)}},
    "log_logit_scale": jnp.asarray(2.0),
  }


def _first_update(config, params, grads):
  """The change of every parameter in the optimiser's first step on `grads`, as the train step
  makes it: the trained parameters' updates, and 0 for a frozen one (outside the optimiser)."""
  frozen = frozen_mask(params, config)
  tx, trained = make_optimizer(config), trained_params(params, frozen)
  updates, _ = tx.update(trained_params(grads, frozen), tx.init(trained), trained)
  return with_trained(jax.tree.map(jnp.zeros_like, params), updates, frozen)


@pytest.fixture
def config(tiny_config):
  tiny_config.optim.warmup_steps = 0  # a non-zero learning rate at step 0
  tiny_config.optim.grad_clip_norm = 1e6  # no clipping: the updates compare directly
  return tiny_config


def test_param_groups_separate_each_scaled_backbone_from_its_projection(config):
  config.optim.text_backbone_lr_scale = 0.1
  groups = param_groups(_params(), config)
  assert groups["text_encoder"]["block1"] == {"kernel": "text_backbone", "bias": "text_backbone"}
  assert groups["text_encoder"]["proj"] == {"kernel": "default", "bias": "default"}
  assert groups["image_encoder"]["stem"]["kernel"] == "default"  # its scale is 1
  assert groups["log_logit_scale"] == "default"
  config.optim.image_backbone_lr_scale = 0.0
  groups = param_groups(_params(), config)
  assert groups["image_encoder"]["stem"]["kernel"] == "image_backbone"
  assert groups["image_encoder"]["proj"]["kernel"] == "default"


def test_locked_image_backbone_gets_no_update_while_its_projection_trains(config):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  reference = _first_update(config, params, grads)
  config.optim.image_backbone_lr_scale = 0.0
  updates = _first_update(config, params, grads)
  np.testing.assert_array_equal(updates["image_encoder"]["stem"]["kernel"], 0.0)
  np.testing.assert_array_equal(
    updates["image_encoder"]["proj"]["kernel"], reference["image_encoder"]["proj"]["kernel"]
  )
  jax.tree.map(np.testing.assert_array_equal, updates["text_encoder"], reference["text_encoder"])


def test_lower_text_backbone_learning_rate_scales_only_its_updates(config):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  full = _first_update(config, params, grads)
  config.optim.text_backbone_lr_scale = 0.25
  scaled = _first_update(config, params, grads)
  for key in ("kernel", "bias"):
    np.testing.assert_allclose(
      scaled["text_encoder"]["block1"][key], 0.25 * full["text_encoder"]["block1"][key], rtol=1e-6
    )
  for a, b in (
    (scaled["text_encoder"]["proj"], full["text_encoder"]["proj"]),
    (scaled["image_encoder"], full["image_encoder"]),
  ):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_frozen_backbone_gets_no_update_no_decay_and_no_share_of_the_clip(config):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  # Huge backbone gradients: if they counted in the global norm, clipping would shrink the rest.
  grads["text_encoder"]["block1"] = jax.tree.map(lambda g: 1e6 * g, grads["text_encoder"]["block1"])
  config.optim.grad_clip_norm = 10.0
  unfrozen_reference = _first_update(config, params, jax.tree.map(jnp.ones_like, params))
  config.optim.text_backbone_lr_scale = 0.0
  updates = _first_update(config, params, grads)
  for leaf in jax.tree.leaves(updates["text_encoder"]["block1"]):
    np.testing.assert_array_equal(leaf, 0.0)  # weight decay would move the kernel otherwise
  jax.tree.map(
    np.testing.assert_array_equal, updates["image_encoder"], unfrozen_reference["image_encoder"]
  )


def test_frozen_mask_exists_only_when_the_backbone_is_frozen(config):
  assert frozen_mask(_params(), config) is None
  config.optim.text_backbone_lr_scale = 0.0
  mask = frozen_mask(_params(), config)
  assert mask["text_encoder"]["block1"]["kernel"] and not mask["text_encoder"]["proj"]["kernel"]
  assert not mask["image_encoder"]["stem"]["kernel"] and not mask["log_logit_scale"]


# Weight matrices (dense and convolution kernels, attention's [in, heads, head_dim] kernels) and the
# embedding tables; biases (attention's [heads, head_dim] ones too), norm scales and the
# temperature are not decayed.
DECAYED_NAMES = ("kernel", "embedding", "pos_embed")


def _tiny_clip_params(config):
  """Random values in the tiny CLIP's parameter tree (names and shapes of the real model)."""
  shapes = abstract_variables(build_model(config), config)["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)


def _leaf_names(tree):
  return [
    (jax.tree_util.keystr(path), path[-1].key)
    for path, _ in jax.tree_util.tree_leaves_with_path(tree)
  ]


def test_weight_decay_mask_decays_matrices_and_embeddings_only(config):
  params = _tiny_clip_params(config)
  names = _leaf_names(params)
  mask = jax.tree.leaves(weight_decay_mask(params))
  assert len(mask) == len(names) > 40
  wrong = [
    path
    for (path, name), decayed in zip(names, mask, strict=True)
    if decayed != (name in DECAYED_NAMES)
  ]
  assert not wrong, f"decayed or not against the rule: {wrong}"


def test_optimizer_decays_exactly_the_masked_leaves(config):
  """With zero gradients AdamW's update is the decay alone: -lr * weight_decay * p on the decayed
  leaves, 0 on the others (what the optimiser applies, not only what the mask says)."""
  params = _tiny_clip_params(config)
  updates = _first_update(config, params, jax.tree.map(jnp.zeros_like, params))
  rate = config.optim.learning_rate * config.optim.weight_decay
  checked = 0
  for (path, name), p, u in zip(
    _leaf_names(params), jax.tree.leaves(params), jax.tree.leaves(updates), strict=True
  ):
    want = -rate * p if name in DECAYED_NAMES else np.zeros_like(p)
    np.testing.assert_allclose(u, want, rtol=1e-6, atol=1e-12, err_msg=path)
    checked += 1
  assert checked == len(jax.tree.leaves(params)) > 40


def test_schedule_warms_up_from_zero_then_decays_to_the_end_value(tiny_config):
  tiny_config.num_steps, tiny_config.optim.warmup_steps = 100, 10
  peak = tiny_config.optim.learning_rate
  end = peak * tiny_config.optim.end_lr_ratio
  schedule = learning_rate_schedule(tiny_config)

  def cosine(step):  # the decay phase, written out: from the peak at 10 to the end value at 100
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (step - 10) / (100 - 10)))

  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(5), peak / 2, rtol=1e-6)  # linear warm-up
  np.testing.assert_allclose(schedule(10), peak, rtol=1e-6)  # end of warm-up: the peak
  np.testing.assert_allclose(schedule(55), (peak + end) / 2, rtol=1e-6)  # half-way down
  np.testing.assert_allclose(schedule(99), cosine(99), rtol=1e-5)  # the last step trained
  np.testing.assert_allclose(schedule(100), end, rtol=1e-6)
  assert float(schedule(99)) > end


def test_gradients_are_clipped_to_the_global_norm_before_adam(config):
  """Adam's first moment after one step is (1 - b1) times the gradient it received: the gradient
  rescaled to norm grad_clip_norm when its global norm (over all leaves together) is larger, the
  gradient itself when it is smaller."""
  config.optim.grad_clip_norm = 2.0
  params = _params()
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  norm = math.sqrt(sum(float(jnp.sum(g * g)) for g in jax.tree.leaves(grads)))
  tx = make_optimizer(config)
  for scale in (10.0 / norm, 0.5 / norm):  # global norms 10 (clipped to 2) and 0.5 (kept)
    scaled = jax.tree.map(lambda g, scale=scale: scale * g, grads)
    _, opt_state = tx.update(scaled, tx.init(params), params)
    mu = optax.tree_utils.tree_get(opt_state, "mu")
    factor = min(1.0, 2.0 / (scale * norm))
    leaves = jax.tree.leaves(mu)
    assert len(leaves) == len(jax.tree.leaves(grads)) > 0
    for got, g in zip(leaves, jax.tree.leaves(scaled), strict=True):
      np.testing.assert_allclose(got, (1 - config.optim.b1) * factor * g, rtol=1e-5, atol=1e-8)


def test_the_optimiser_holds_no_state_for_a_frozen_backbone(config):
  """Adam's moments cover the trained parameters only: a locked tower adds nothing to the state
  (nor to the step's gradient, clipping and update passes)."""
  params = _params()
  config.optim.text_backbone_lr_scale = 0.0
  frozen = frozen_mask(params, config)
  state = make_optimizer(config).init(trained_params(params, frozen))
  # Arrays only: the scalar counters of the state (Adam's, the NaN guard's) aside, and the scalar
  # temperature's moments with them.
  moments = sum(np.size(leaf) for leaf in jax.tree.leaves(state) if np.ndim(leaf) > 0)
  trained = sum(np.size(p) for p in jax.tree.leaves(params) if np.ndim(p) > 0) - 20  # block1's
  assert moments == 2 * trained  # mu and nu of each trained parameter, nothing else
