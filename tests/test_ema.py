"""optim.ema_decay: a moving average of the trained weights, updated after every step with a
warmed-up decay, evaluated and saved as the model while the raw weights train on."""

import jax
import numpy as np
import pytest

from conftest import tiny_clip_config
from jclip.config.checks import validate
from jclip.config.defaults import ConfigError
from jclip.data.sources import make_source
from jclip.runs.restore import restore_model
from jclip.runs.tokenizers import new_run_tokenizer
from jclip.training import inputs, loop
from jclip.training.state import ema_decay_at, init_state
from jclip.training.step import make_p_train_step, replicate, unreplicate

DECAY = 0.9


def _config():
  config = tiny_clip_config()
  config.optim.ema_decay = DECAY
  return config


def test_the_decay_warms_up_to_ema_decay():
  np.testing.assert_allclose(
    [ema_decay_at(step, DECAY) for step in (0, 1, 8, 80, 10**6)], [0.1, 2 / 11, 0.5, 0.9, 0.9]
  )


def test_the_average_follows_the_raw_weights_step_by_step():
  """After update n: ema = d * ema + (1 - d) * params, d = ema_decay_at(n)."""
  config = _config()
  _, state = init_state(config)
  assert jax.tree.structure(state.ema_params) == jax.tree.structure(state.params)
  source = make_source(config.data, "train")
  batches = iter(inputs.config_train_batches(config, source, new_run_tokenizer(config, source)))
  p_step, replicated = make_p_train_step(config, state.params), replicate(state)
  expected = jax.tree.map(np.asarray, state.params)
  for updates in (1, 2, 3):
    replicated, _ = p_step(replicated, next(batches), jax.random.key(0))
    params, d = unreplicate(replicated.params), float(ema_decay_at(updates, DECAY))
    expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, expected, params)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      unreplicate(replicated.ema_params),
      expected,
    )
  assert not np.allclose(expected["log_logit_scale"], params["log_logit_scale"])


def test_the_saved_and_evaluated_model_is_the_average(tmp_path):
  workdir = str(tmp_path / "ema")
  state = loop.train(_config(), workdir)
  restored = restore_model(workdir, "latest")
  jax.tree.map(np.testing.assert_array_equal, restored.variables["params"], state.ema_params)
  assert not np.allclose(
    restored.variables["params"]["log_logit_scale"], state.params["log_logit_scale"]
  )


def test_a_decay_outside_0_1_is_refused():
  validate(_config(), 1)
  config = _config()
  config.optim.ema_decay = 1.0
  with pytest.raises(ConfigError, match=r"optim.ema_decay=1.0: use 0 \(no average\)"):
    validate(config, 1)
