"""Rematerialisation (config.model.remat): every block of the text transformer, the CNN and
EfficientNet-Lite recomputes its activations in the backward pass, with the parameters and the
train step's result unchanged."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclip.config.defaults import image_tower
from jclip.tasks import build_model, example_inputs
from jclip.training.state import abstract_state, init_state
from jclip.training.step import make_p_train_step

NUM_DEVICES = 8


def _remat_count(config) -> int:
  """How many rematerialised blocks the gradient of the model's training pass holds (traced, not
  run): jax.checkpoint's `remat2` equations of the jaxpr."""
  model, variables = build_model(config), abstract_state(config).variables
  inputs = jax.eval_shape(lambda: example_inputs(config))

  def gradients(variables, inputs):
    def loss(params):
      outputs, _ = model.apply(
        {**variables, "params": params},
        **inputs,
        train=True,
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats"],
      )
      return sum(jnp.sum(x) for x in jax.tree.leaves(outputs))

    return jax.grad(loss)(variables["params"])

  jaxpr = jax.make_jaxpr(gradients)(variables, inputs).jaxpr
  return collections.Counter(equation.primitive.name for equation in jaxpr.eqns)["remat2"]


@pytest.mark.parametrize("remat", [False, True])
def test_each_block_is_rematerialised(tiny_config, remat):
  """The tiny CLIP: 2 residual blocks and 1 transformer block; EfficientNet-Lite0: 16 MBConv
  blocks (+ the text block)."""
  tiny_config.model.remat = remat
  assert _remat_count(tiny_config) == (3 if remat else 0)
  tiny_config.model.image = image_tower("efficientnet_lite")
  tiny_config.data.image_size = 32
  assert _remat_count(tiny_config) == (17 if remat else 0)


def test_the_step_with_remat_equals_the_step_without(tiny_config):
  """One pmap'd step on 8 devices from the same state, batch and key, with BatchNorm (its
  statistics are updated inside the rematerialised blocks) and text dropout (the recomputed
  forward pass must draw the masks of the first): the same parameter names, and the same loss,
  gradient norm, parameters, optimiser state and statistics after the step. Clipping is off and
  Adam's eps 1e-3, as in tests/test_step.py: otherwise rounding noise in gradients that are 0 in
  exact arithmetic would move some weights by +-lr."""
  tiny_config.model.image.norm = "batch"
  tiny_config.optim.update(warmup_steps=0, grad_clip_norm=1e6, eps=1e-3)
  assert tiny_config.model.text.dropout_rate > 0
  rng = np.random.default_rng(0)
  per_device, size = tiny_config.batch_size // NUM_DEVICES, tiny_config.data.image_size
  batch = {
    "image": rng.normal(size=(NUM_DEVICES, per_device, size, size, 3)).astype(np.float32),
    "tokens": rng.integers(
      1, tiny_config.tokenizer.vocab_size, size=(NUM_DEVICES, per_device, 12)
    ).astype(np.int32),
  }
  initial, results = {}, {}
  for remat in (False, True):
    tiny_config.model.remat = remat
    _, state = init_state(tiny_config)  # as the loop builds it: its apply_fn is the step's model
    initial[remat] = jax.device_get(state.params)
    copies = jax.tree.map(lambda x: np.stack([np.asarray(x)] * NUM_DEVICES), state)
    step = make_p_train_step(tiny_config, state.params)
    results[remat] = jax.device_get(step(copies, batch, jax.random.key(1)))
  # The same parameters, by name and value: a checkpoint of either fits the other.
  assert jax.tree.structure(initial[True]) == jax.tree.structure(initial[False])
  for x, y in zip(jax.tree.leaves(initial[False]), jax.tree.leaves(initial[True]), strict=True):
    np.testing.assert_array_equal(y, x)
  (plain_state, plain_metrics), (remat_state, remat_metrics) = results[False], results[True]
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(remat_metrics[name], plain_metrics[name], rtol=1e-5, err_msg=name)
  for name in ("params", "opt_state", "batch_stats"):
    plain = jax.tree.leaves(getattr(plain_state, name))
    rematerialised = jax.tree.leaves(getattr(remat_state, name))
    assert len(plain) == len(rematerialised) > 0, name
    for x, y in zip(plain, rematerialised, strict=True):
      np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6, err_msg=name)
