"""model.head_dim: the towers' projection as a two-layer MLP under the name "proj", dropout in
training only; the default stays one linear layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclip import tasks
from jclip.config.checks import validate
from jclip.config.defaults import ConfigError
from jclip.models.heads import MLPHead


def _proj_shapes(config, tower):
  variables = tasks.abstract_variables(tasks.build_model(config), config)
  return jax.tree.map(lambda x: x.shape, variables["params"][tower]["proj"])


def test_the_default_projection_is_one_linear_layer(tiny_config):
  assert _proj_shapes(tiny_config, "image_encoder") == {"kernel": (16, 16), "bias": (16,)}


def test_a_head_dim_makes_both_towers_project_through_an_mlp(tiny_config):
  tiny_config.model.head_dim = 24
  for tower, width in (("image_encoder", 16), ("text_encoder", 16)):
    assert _proj_shapes(tiny_config, tower) == {
      "hidden": {"kernel": (width, 24), "bias": (24,)},
      "norm": {"scale": (24,), "bias": (24,)},
      "out": {"kernel": (24, 16), "bias": (16,)},
    }


def test_head_dropout_acts_in_training_only():
  head = MLPHead(embed_dim=4, hidden_dim=64, dropout_rate=0.5)
  x_BF = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
  variables = head.init(jax.random.key(0), x_BF)
  np.testing.assert_array_equal(head.apply(variables, x_BF), head.apply(variables, x_BF))
  rngs = {"dropout": jax.random.key(1)}
  trained_BE = head.apply(variables, x_BF, train=True, rngs=rngs)
  assert not np.allclose(trained_BE, head.apply(variables, x_BF))


@pytest.mark.parametrize("field, value", [("head_dim", 0), ("head_dropout", 1.0)])
def test_bad_head_settings_are_named(tiny_config, field, value):
  tiny_config.model[field] = value
  with pytest.raises(ConfigError, match=f"model.{field}={value}"):
    validate(tiny_config, 1)
