"""The train state and its optimiser (AdamW with warmup + cosine decay, clipping, a NaN guard),
built fresh from a config or restored from a checkpoint; a run's start (start_state): a new run's
state and tokenizer, or the latest readable checkpoint's."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from jclip.runs.checkpoint import Checkpoints, Selected
from jclip.runs.metrics import say
from jclip.runs.tokenizers import new_run_tokenizer, tokenizer_from_bytes
from jclip.tasks import build_model, init_variables
from jclip.training.transfer import init_towers


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm's running statistics (an empty dict without BatchNorm) and
  the moving average of the trained parameters (a `trained_params` tree; None without one)."""

  batch_stats: Any = flax.core.FrozenDict()
  ema_params: Any = None

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
    init_value=0.0,
    peak_value=optim.learning_rate,
    warmup_steps=optim.warmup_steps,
    decay_steps=config.num_steps,
    end_value=optim.learning_rate * optim.end_lr_ratio,
  )


def weight_decay_mask(params) -> Any:
  """Decay weight matrices and embedding tables only; biases, norm scales and the temperature are
  left alone, as in CLIP and BERT. Biases are told by name, not rank: the attention's query, key
  and value biases are [heads, head_dim] matrices."""

  def decayed(path, p):
    return jnp.ndim(p) >= 2 and getattr(path[-1], "key", None) != "bias"

  return jax.tree_util.tree_map_with_path(decayed, params)


# The towers' backbones (all but their projection "proj": the part that a pretrained or classifier
# checkpoint provides), each with its own learning-rate scale.
BACKBONES = {"text_backbone": "text_encoder", "image_backbone": "image_encoder"}


def lr_scales(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Each backbone's learning rate relative to the rest (optim.<group>_lr_scale)."""
  return {group: float(config.optim[f"{group}_lr_scale"]) for group in BACKBONES}


def param_groups(params, config: ml_collections.ConfigDict) -> Any:
  """The group of every parameter: a backbone whose learning-rate scale is not 1, or "default"
  for everything else (so a run without scales keeps a single optimiser)."""
  scaled = {tower: group for group, tower in BACKBONES.items() if lr_scales(config)[group] != 1.0}

  def group(path, _):
    keys = [getattr(key, "key", None) for key in path]
    return scaled.get(keys[0], "default") if keys[1:2] != ["proj"] else "default"

  return jax.tree_util.tree_map_with_path(group, params)


def frozen_mask(params, config: ml_collections.ConfigDict) -> Any:
  """True for the parameters that never train (a backbone whose scale is 0), or None when
  everything trains."""
  locked = {group for group, scale in lr_scales(config).items() if scale == 0.0}
  if not locked:
    return None
  return jax.tree.map(lambda group: group in locked, param_groups(params, config))


def trained_params(params, frozen) -> Any:
  """`params` with None in place of every frozen leaf (`frozen_mask`): the tree that the gradient,
  the optimiser and its state cover. A locked backbone then costs the step nothing: no gradient,
  no moments, no update (a LiT step trains a few hundred thousand of 26M parameters)."""
  if frozen is None:
    return params
  return jax.tree.map(lambda p, f: None if f else p, params, frozen)


def with_trained(params, trained, frozen) -> Any:
  """`params` with each trained leaf taken from `trained` (a `trained_params` tree)."""
  if frozen is None:
    return trained
  return jax.tree.map(lambda f, p, t: p if f else t, frozen, params, trained)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping, then AdamW, over the trained parameters (`trained_params`: a locked backbone is not
  in the tree, so it neither counts in the clipping norm nor decays); a backbone's learning rate is
  optim.<group>_lr_scale times the schedule's."""
  optim = config.optim
  schedule = learning_rate_schedule(config)
  adamw = lambda learning_rate: optax.adamw(
    learning_rate,
    b1=optim.b1,
    b2=optim.b2,
    eps=optim.eps,
    weight_decay=optim.weight_decay,
    mask=weight_decay_mask,
  )
  clip = optax.clip_by_global_norm(optim.grad_clip_norm)
  scaled = {group: scale for group, scale in lr_scales(config).items() if scale not in (0.0, 1.0)}
  if not scaled:
    tx = optax.chain(clip, adamw(schedule))
  else:
    transforms = {"default": adamw(schedule)}
    for group, scale in scaled.items():
      transforms[group] = adamw(lambda step, scale=scale: scale * schedule(step))
    tx = optax.chain(clip, optax.partition(transforms, lambda p: param_groups(p, config)))
  # A non-finite gradient skips the update instead of poisoning the weights; after
  # max_consecutive_nonfinite in a row the NaN goes through and the loop stops with an error.
  return optax.apply_if_finite(tx, max_consecutive_errors=optim.max_consecutive_nonfinite)


def create_train_state(model, config: ml_collections.ConfigDict, variables: dict):
  """The train state of fresh `variables` (from model.init): step 0, a new optimiser state of the
  trained parameters, and their moving average (starting at them) when optim.ema_decay > 0."""
  params, tx = variables["params"], make_optimizer(config)
  trained = trained_params(params, frozen_mask(params, config))
  return TrainState(
    step=0,
    apply_fn=model.apply,
    params=params,
    tx=tx,
    opt_state=tx.init(trained),
    batch_stats=variables.get("batch_stats", flax.core.FrozenDict()),
    ema_params=trained if config.optim.ema_decay > 0 else None,
  )


def ema_decay_at(updates, ema_decay: float):
  """The moving average's decay at update number `updates` (1, 2, ...): ema_decay, warmed up as
  (1 + updates) / (10 + updates), so that the average does not hold on to the initial weights for
  ~1 / (1 - decay) steps (TensorFlow's ExponentialMovingAverage with num_updates)."""
  return jnp.minimum(ema_decay, (1.0 + updates) / (10.0 + updates))


def updated_ema(state: TrainState, frozen, ema_decay: float) -> TrainState:
  """The state, just updated (its step counts that update), with its moving average moved towards
  its trained parameters."""
  if state.ema_params is None:
    return state
  decay = ema_decay_at(state.step, ema_decay)
  ema = jax.tree.map(
    lambda e, p: decay * e + (1.0 - decay) * p,
    state.ema_params,
    trained_params(state.params, frozen),
  )
  return state.replace(ema_params=ema)


def model_variables(state: TrainState, frozen) -> dict:
  """The variables a model is used with (evaluated, kept as the best, saved as "the model"): the
  moving average of the trained parameters when there is one, else the parameters themselves."""
  if state.ema_params is None:
    return state.variables
  return dict(state.variables, params=with_trained(state.params, state.ema_params, frozen))


def checkpoint_items(state: TrainState, frozen) -> tuple[dict, dict]:
  """(the model's variables, what only training needs) of a train state, as a checkpoint keeps
  them: with a moving average the model is the average, and the raw trained parameters go with
  the optimiser (a list of arrays, in tree order) so that training resumes exactly."""
  training = {"step": state.step, "opt_state": state.opt_state}
  if state.ema_params is not None:
    training["raw_params"] = jax.tree.leaves(trained_params(state.params, frozen))
  return model_variables(state, frozen), training


def apply_trained_gradients(state: TrainState, grads, frozen, **changes) -> TrainState:
  """The state after one optimiser step on `grads` of the trained parameters (a `trained_params`
  tree), with `changes` (batch_stats) replaced."""
  trained = trained_params(state.params, frozen)
  updates, opt_state = state.tx.update(grads, state.opt_state, trained)
  params = with_trained(state.params, optax.apply_updates(trained, updates), frozen)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **changes)


def init_state(config: ml_collections.ConfigDict):
  """The model and a freshly initialised train state (the same on every host: seeded by config)."""
  model = build_model(config)
  rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  # One jitted computation: initialising leaf by leaf would compile every operation on its own.
  state = jax.jit(
    lambda key: create_train_state(model, config, init_variables(model, config, key))
  )(rng)
  return model, state


def abstract_state(config: ml_collections.ConfigDict):
  """The train state's structure, shapes and dtypes, without allocating or computing anything."""
  return jax.eval_shape(lambda: init_state(config)[1])


def restore_state(
  checkpoints: Checkpoints, config: ml_collections.ConfigDict, selected: Selected | None = None
):
  """The train state of a checkpoint (the latest by default): its model variables and optimiser,
  and with a moving average the raw parameters beside it (`checkpoint_items`)."""
  abstract = abstract_state(config)
  frozen = frozen_mask(abstract.params, config)
  model, training = checkpoint_items(abstract, frozen)
  variables = checkpoints.variables(model, selected)
  training = checkpoints.optimizer(training, selected)
  params = variables["params"]
  ema_params = None
  if abstract.ema_params is not None:
    ema_params = trained_params(params, frozen)
    raw = jax.tree.unflatten(jax.tree.structure(ema_params), training.pop("raw_params"))
    params = with_trained(params, raw, frozen)
  return abstract.replace(
    params=params,
    batch_stats=variables.get("batch_stats", abstract.batch_stats),
    ema_params=ema_params,
    **training,
  )


def _resume(
  checkpoints: Checkpoints,
  config: ml_collections.ConfigDict,
  selected: Selected,
  allow_config_change: bool,
):
  """(tokenizer, train state) of a checkpoint written by this config's model."""
  checkpoints.check_compatible(config, selected, allow_config_change)
  tokenizer = tokenizer_from_bytes(config.tokenizer, checkpoints.tokenizer_bytes(selected))
  return tokenizer, restore_state(checkpoints, config, selected)


def start_state(
  config: ml_collections.ConfigDict, workdir: str, train_source, allow_config_change: bool
):
  """(tokenizer, train state): the latest readable checkpoint's in `workdir` (an unreadable one is
  set aside as <step>.unreadable), or a new run's (towers initialised as config.init says)."""
  checkpoints = Checkpoints.existing(workdir, keep=config.keep_checkpoints)
  if checkpoints is None or checkpoints.latest_step() is None:
    return new_run_tokenizer(config, train_source), init_towers(init_state(config)[1], config)
  selected, (tokenizer, state), unreadable = checkpoints.newest_readable(
    lambda selected: _resume(checkpoints, config, selected, allow_config_change),
    checkpoints.select("latest"),
  )
  if unreadable:
    checkpoints.set_aside(unreadable)
  say(
    f"Resuming {workdir} from step {int(state.step)}"
    + (f", {selected.reason}; set aside as <step>.unreadable." if unreadable else ".")
  )
  return tokenizer, state
