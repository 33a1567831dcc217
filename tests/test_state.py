"""The optimiser: weight decay only on matrices, and the text backbone's own learning rate (lower,
or frozen) for pretrained text towers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclip.training.state import frozen_mask, make_optimizer, param_groups


def _params():
  """A CLIP-shaped tree: text backbone, text projection, image tower, temperature."""
  rng = np.random.default_rng(0)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {"text_encoder": {"block1": {"kernel": leaf(4, 4), "bias": leaf(4)},
                           "proj": {"kernel": leaf(4, 3), "bias": leaf(3)}},
          "image_encoder": {"stem": {"kernel": leaf(2, 4)}, "proj": {"kernel": leaf(4, 3)}},
          "log_logit_scale": jnp.asarray(2.0)}


def _first_update(config, params, grads):
  tx = make_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.fixture
def config(tiny_config):
  tiny_config.optim.warmup_steps = 0  # a non-zero learning rate at step 0
  tiny_config.optim.grad_clip_norm = 1e6  # no clipping: the updates compare directly
  return tiny_config


def test_param_groups_separate_the_text_backbone_from_its_projection():
  groups = param_groups(_params())
  assert groups["text_encoder"]["block1"] == {"kernel": "text_backbone", "bias": "text_backbone"}
  assert groups["text_encoder"]["proj"] == {"kernel": "default", "bias": "default"}
  assert groups["image_encoder"]["stem"]["kernel"] == "default"
  assert groups["log_logit_scale"] == "default"


def test_lower_text_backbone_learning_rate_scales_only_its_updates(config):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  full = _first_update(config, params, grads)
  config.optim.text_backbone_lr_scale = 0.25
  scaled = _first_update(config, params, grads)
  for key in ("kernel", "bias"):
    np.testing.assert_allclose(scaled["text_encoder"]["block1"][key],
                               0.25 * full["text_encoder"]["block1"][key], rtol=1e-6)
  for a, b in ((scaled["text_encoder"]["proj"], full["text_encoder"]["proj"]),
               (scaled["image_encoder"], full["image_encoder"])):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_frozen_backbone_gets_no_update_no_decay_and_no_share_of_the_clip(config):
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)
  # Huge backbone gradients: if they counted in the global norm, clipping would shrink the rest.
  grads["text_encoder"]["block1"] = jax.tree.map(lambda g: 1e6 * g,
                                                 grads["text_encoder"]["block1"])
  config.optim.grad_clip_norm = 10.0
  unfrozen_reference = _first_update(config, params, jax.tree.map(jnp.ones_like, params))
  config.optim.text_backbone_lr_scale = 0.0
  updates = _first_update(config, params, grads)
  for leaf in jax.tree.leaves(updates["text_encoder"]["block1"]):
    np.testing.assert_array_equal(leaf, 0.0)  # weight decay would move the kernel otherwise
  jax.tree.map(np.testing.assert_array_equal, updates["image_encoder"],
               unfrozen_reference["image_encoder"])


def test_frozen_mask_exists_only_when_the_backbone_is_frozen(config):
  assert frozen_mask(_params(), config) is None
  config.optim.text_backbone_lr_scale = 0.0
  mask = frozen_mask(_params(), config)
  assert mask["text_encoder"]["block1"]["kernel"] and not mask["text_encoder"]["proj"]["kernel"]
  assert not mask["image_encoder"]["stem"]["kernel"] and not mask["log_logit_scale"]
