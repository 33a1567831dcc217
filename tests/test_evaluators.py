"""The in-loop evaluators: their figures equal the offline evaluation's, bad entries are named
before training, NaN weights give NaN figures, and each runs on its schedule."""

import jax
import ml_collections
import numpy as np
import pytest

from jclip.config.defaults import ConfigError, evaluator
from jclip.data.sources import make_source
from jclip.evaluation import evaluators
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.retrieval import retrieval_metrics
from jclip.evaluation.zeroshot import class_prompts, zero_shot_logits, zero_shot_weights
from jclip.runs.tokenizers import make_tokenizer
from jclip.tasks import build_model, init_variables


@pytest.fixture(scope="module")
def fresh_clip():
  """(config, model, variables, tokenizer) of a tiny, randomly initialised CLIP."""
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  model = build_model(config)
  variables = init_variables(model, config, jax.random.key(1))
  return config, model, variables, make_tokenizer(config, make_source(config.data, "train"))


def _figures(config, model, variables, tokenizer, step=None):
  built = evaluators.Evaluators(config, model, tokenizer)
  return built.run(config.num_steps if step is None else step, variables)


def test_retrieval_and_zeroshot_figures_equal_the_offline_evaluation(fresh_clip):
  config, model, variables, tokenizer = fresh_clip
  figures = _figures(config, model, variables, tokenizer)
  # The offline path: stream the split's images through the model (eval.py's way, decoding batch
  # by batch), then the metric functions.
  predictor = Predictor(model, tokenizer, config)
  source = make_source(config.data, "val")
  offline_split = EvalSplit(source, config, tokenizer, keep_views=False)
  embedded = offline_split.embed(predictor, variables)
  image_emb, text_emb = embedded.image_emb_ND, embedded.text_emb_MD
  offline = retrieval_metrics(image_emb, text_emb, embedded.text_to_image_M)
  for name in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
    assert figures[f"val/{name}"] == pytest.approx(offline[name])
  assert figures["val/rsum"] == pytest.approx(
    sum(offline[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
  )
  weights = zero_shot_weights(
    lambda texts: predictor.texts(variables, texts), class_prompts(source.class_names)
  )
  predictions = np.argmax(zero_shot_logits(image_emb, weights), axis=1)
  labels = np.array([source[i]["label"] for i in range(len(source))])
  assert figures["zeroshot/top1"] == pytest.approx(np.mean(predictions == labels))
  assert 0 <= figures["zeroshot/macro_f1"] <= 1


def test_every_local_device_gives_the_figures_of_one_device(fresh_clip):
  """The evaluators embed each batch on all 8 devices (its rows split between them; a batch of 12
  is padded to 16): the same embeddings as on one device, to float rounding, and the same
  retrieval and zero-shot figures."""
  config, model, variables, tokenizer = fresh_clip
  split = EvalSplit(make_source(config.data, "val"), config, tokenizer)
  results = {}
  for devices in (jax.local_devices(), jax.local_devices()[:1]):
    predictor = Predictor(model, tokenizer, config, devices)
    placed = predictor.on_devices(variables)
    assert len(jax.tree.leaves(placed)[0].sharding.device_set) == len(devices)
    embedded = split.embed(predictor, placed, batch_size=12)
    clip_evaluators = [
      evaluator(split, predictor, batch_size=12)
      for evaluator in evaluators.EVALUATORS.values()
      if "clip" in evaluator.tasks
    ]
    figures = [evaluator.figures(evaluator(placed)) for evaluator in clip_evaluators]
    results[len(devices)] = embedded, figures
  (embedded_8, figures_8), (embedded_1, figures_1) = results[8], results[1]
  for name in ("image_emb_ND", "text_emb_MD"):
    np.testing.assert_allclose(
      getattr(embedded_8, name), getattr(embedded_1, name), rtol=1e-5, atol=1e-6, err_msg=name
    )
  assert len(figures_1) == 2  # retrieval and zero-shot: what the loop logs
  for on_8, on_1 in zip(figures_8, figures_1, strict=True):
    assert on_8 == pytest.approx(on_1)


def test_non_finite_weights_give_nan_figures_not_perfect_ones(fresh_clip):
  config, model, variables, tokenizer = fresh_clip
  poisoned = jax.tree.map(lambda x: np.full_like(x, np.nan), variables)
  figures = _figures(config, model, poisoned, tokenizer)
  assert figures and all(np.isnan(value) for value in figures.values()), figures


def test_a_new_step_s_weights_are_embedded_anew(fresh_clip):
  """The evaluators of one step share the split's image embeddings; the next step's weights must
  not reuse them."""
  config, model, variables, tokenizer = fresh_clip
  built = evaluators.Evaluators(config, model, tokenizer)
  first = built.run(config.num_steps, variables)
  other = init_variables(model, config, jax.random.key(2))  # another step's weights
  second = built.run(config.num_steps, other)
  assert second == _figures(config, model, other, tokenizer) != first


def test_each_evaluator_runs_every_n_steps_and_at_the_last(fresh_clip):
  config, model, _, tokenizer = fresh_clip
  config = config.copy_and_resolve_references()
  config.num_steps = 7
  config.evals.val.every, config.evals.zeroshot.every = 3, 0  # 0: off
  built = evaluators.Evaluators(config, model, tokenizer)
  assert [step for step in range(1, 8) if built.due(step)] == [3, 6, 7]
  assert len(built) == 1


def test_classifier_evaluator_scores_the_classifier(fresh_clip):
  from conftest import tiny_clip_config

  config = tiny_clip_config()
  config.task, config.model.num_classes = "image_classifier", 5
  config.evals = ml_collections.ConfigDict(dict(val=evaluator("classification", batch_size=8)))
  config.best_metric = "val/top1"
  tokenizer = fresh_clip[3]
  model = build_model(config)
  variables = init_variables(model, config, jax.random.key(0))
  figures = _figures(config, model, variables, tokenizer)
  source = make_source(config.data, "val")
  images = np.stack([source[i]["image"] for i in range(len(source))])
  from jclip.pixels import normalize_images

  logits = model.apply(variables, image=normalize_images(images))
  labels = np.array([source[i]["label"] for i in range(len(source))])
  assert figures["val/top1"] == pytest.approx(np.mean(np.argmax(logits, axis=1) == labels))


def _errors(config):
  return "\n".join(evaluators.config_errors(config))


def test_config_errors_name_the_field_and_the_choices(tiny_config):
  assert evaluators.config_errors(tiny_config) == []
  tiny_config.evals.val.type = "recall"
  message = _errors(tiny_config)
  assert "evals.val.type='recall'" in message
  assert "'classification', 'retrieval', 'zeroshot'" in message


def test_best_metric_must_be_a_figure_of_a_running_evaluator(tiny_config):
  tiny_config.best_metric = "val/r10"
  message = _errors(tiny_config)
  assert "best_metric='val/r10'" in message
  assert "'val/rsum'" in message and "'zeroshot/top1'" in message
  tiny_config.best_metric = "val/rsum"
  tiny_config.evals.val.every = 0  # turned off: its figures no longer exist
  assert "best_metric='val/rsum' is not a figure" in _errors(tiny_config)


def test_evaluator_of_another_task_and_unknown_fields_are_refused(tiny_config):
  tiny_config.evals.val.type = "classification"
  assert "evals.val.type='classification' evaluates image_classifier or text_classifier" in (
    _errors(tiny_config)
  )
  tiny_config.evals.val.spilt = "val"
  assert "evals.val has unknown field(s) ['spilt']" in _errors(tiny_config)


def test_a_split_the_data_lacks_is_named_before_training(tiny_config, fresh_clip):
  _, model, _, tokenizer = fresh_clip
  tiny_config.evals.val.split = "test"
  with pytest.raises(ConfigError, match=r"evals.val.split='test'.*'train' and 'val'"):
    evaluators.Evaluators(tiny_config, model, tokenizer)


def test_zeroshot_on_a_split_without_classes_is_named(fresh_clip):
  from test_suite import Unlabelled

  config, model, _, tokenizer = fresh_clip
  unlabelled = EvalSplit(Unlabelled(make_source(config.data, "val")), config, tokenizer)
  with pytest.raises(ConfigError, match="evals.zeroshot: the val split has no class labels"):
    evaluators.ZeroShotEvaluator(
      unlabelled, Predictor(model, tokenizer, config), 8, "evals.zeroshot"
    )


def test_a_run_whose_evaluator_cannot_start_leaves_no_workdir(tiny_config, tmp_path):
  """The evaluators are built before the workdir is made: a split the data lacks stops train()
  with nothing written (no empty checkpoints/ or best/ for the next run to trip over)."""
  from jclip.training import loop

  tiny_config.evals.val.split = "test"
  with pytest.raises(ConfigError, match=r"evals.val.split='test'"):
    loop.train(tiny_config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
