"""A locked, pretrained image tower (LiT): its features cached once, a train step on them equal to
one that runs the backbone, the cache reused and rebuilt exactly when it should be, the config
checks, and the ImageNet weights landing in CLIP's image tower."""

import json

import jax
import numpy as np
import pytest

from jclip.config.checks import validate
from jclip.config.defaults import ConfigError, image_tower
from jclip.config.derived import step_batch_size
from jclip.data.augment import eval_view
from jclip.data.sources import CachedFeatureSource
from jclip.data.synthetic import CaptionedShapes
from jclip.models.efficientnet_weights import WeightsError
from jclip.models.pretrained import load_image_backbone
from jclip.models.text import TextTransformer
from jclip.pixels import normalize_images
from jclip.runs import feature_cache
from jclip.runs.metrics import read_metrics
from jclip.training import loop
from jclip.training.state import init_state
from jclip.training.step import make_p_train_step, replicate, unreplicate
from jclip.training.transfer import init_towers


def _lit(config, cache_dir):
  """The tiny CLIP with a locked EfficientNet-Lite0 image tower (random weights: no download)."""
  config.model.image = image_tower("efficientnet_lite", variant="lite0", locked=True)
  config.optim.image_backbone_lr_scale = 0.0
  config.data.image_size = 32
  config.data.cached_views = 2
  config.data.feature_cache_dir = str(cache_dir)
  return config


@pytest.fixture
def lit_config(tiny_config, tmp_path):
  return _lit(tiny_config, tmp_path / "features")


@pytest.fixture(scope="module")
def lit_state(tmp_path_factory):
  """(config, a fresh train state) of the tiny LiT CLIP: built once, its init compiled once."""
  from conftest import tiny_clip_config

  config = _lit(tiny_clip_config(), tmp_path_factory.mktemp("features"))
  config.optim.warmup_steps = 0  # a learning rate above 0 at the first step
  return config, init_state(config)[1]


def _batch(config, image_input, image_field="image"):
  devices = jax.local_device_count()
  per_device = step_batch_size(config) // devices
  rng = np.random.default_rng(0)
  return {
    image_field: image_input.reshape(devices, per_device, *image_input.shape[1:]),
    "tokens": rng.integers(1, 64, (devices, per_device, config.data.max_text_len)).astype(np.int32),
    "label": np.zeros((devices, per_device), np.int32),
  }


def _uncached(config):
  """The same run with the locked towers running on their inputs: no feature is cached."""
  config = config.copy_and_resolve_references()
  config.data.update(cached_views=0, cached_text=False)
  return config


@pytest.mark.parametrize("accum_steps", [1, 3])
def test_a_step_on_cached_features_equals_a_step_that_runs_the_locked_backbone(
  lit_state, accum_steps
):
  """Also in 3 accumulated chunks: the locked backbone's BatchNorm statistics, returned unchanged
  by every chunk, must stay bit for bit (a plain mean of 3 equal floats may round). The statistics
  are shifted off their initial 0 and 1, which no average would change."""
  lit_config, state = lit_state
  lit_config = lit_config.copy_and_resolve_references()
  lit_config.accum_steps = accum_steps
  rng = np.random.default_rng(2)
  state = state.replace(
    batch_stats=jax.tree.map(
      lambda x: x + rng.uniform(0.1, 0.5, x.shape).astype(np.float32), state.batch_stats
    )
  )
  images = normalize_images(
    np.random.default_rng(1).integers(0, 256, (step_batch_size(lit_config), 32, 32, 3), np.uint8)
  )
  backbone, _ = feature_cache.locked_backbone(lit_config, state.variables)
  features = np.asarray(backbone(images))
  key = jax.random.key(0)
  from_images, _ = make_p_train_step(_uncached(lit_config), state.params)(
    replicate(state), _batch(lit_config, images), key
  )
  from_features, _ = make_p_train_step(lit_config, state.params)(
    replicate(state), _batch(lit_config, features, "image_features"), key
  )
  from_images, from_features = unreplicate(from_images), unreplicate(from_features)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4),
    from_images.params,
    from_features.params,
  )
  # Locked: neither the backbone's weights nor its BatchNorm statistics moved.
  for collection in ("params", "batch_stats"):
    jax.tree.map(
      np.testing.assert_array_equal,
      from_images.variables[collection]["image_encoder"]["backbone"],
      state.variables[collection]["image_encoder"]["backbone"],
    )
  assert not np.allclose(
    from_features.params["image_encoder"]["proj"]["kernel"],
    state.params["image_encoder"]["proj"]["kernel"],
  )


class _CountingBackbone:
  """A stand-in backbone (per-channel means of the normalised images) that counts its images."""

  def __init__(self):
    self.images = 0

  def __call__(self, images_BHW3):
    self.images += len(images_BHW3)
    return images_BHW3.mean(axis=(1, 2))


def test_feature_cache_is_reused_and_rebuilt_whenever_an_input_changes(tiny_config, tmp_path):
  data = tiny_config.data
  data.crop_scale_min, data.flip = 0.5, True
  source = CaptionedShapes("train", 6, image_size=16)
  backbone = _CountingBackbone()

  def features(source=source, views=3, digest="w1"):
    return feature_cache.backbone_features(
      source, views, data, backbone, digest, str(tmp_path), batch_size=3
    )

  first = features()
  assert first.shape == (6, 3, 3) and backbone.images == 18
  np.testing.assert_array_equal(features(), first)
  assert backbone.images == 18  # read back, not recomputed
  np.testing.assert_allclose(
    first[:, 0],
    normalize_images(np.stack([eval_view(source[i]["image"], 16) for i in range(6)])).mean(
      axis=(1, 2)
    ),
    atol=1e-6,
  )
  assert not np.allclose(first[:, 1], first[:, 2])  # two different random views

  for changed in (
    dict(views=2),
    dict(digest="w2"),
    dict(source=CaptionedShapes("train", 6, image_size=16, seed=1)),
  ):
    before = backbone.images
    features(**changed)
    assert backbone.images > before, changed
  data.image_size = 12
  before = backbone.images
  assert features().shape == (6, 3, 3) and backbone.images > before
  assert len(list(tmp_path.glob("*.npy"))) == 5 and not list(tmp_path.glob("*.tmp"))


def test_random_views_are_the_same_on_every_run(tiny_config, tmp_path):
  tiny_config.data.crop_scale_min, tiny_config.data.flip = 0.3, True
  source = CaptionedShapes("train", 4, image_size=16)
  runs = [
    feature_cache.backbone_features(
      source, 3, tiny_config.data, _CountingBackbone(), "w", str(tmp_path / str(run))
    )
    for run in range(2)
  ]
  np.testing.assert_array_equal(*runs)


@pytest.mark.parametrize(
  "change,message",
  [
    (dict(locked=False), "model.image.locked=False but optim.image_backbone_lr_scale=0.0"),
    (dict(scale=0.5), "data.cached_views=2 caches a locked backbone's features"),
    (dict(image_size=16), "data.image_size=16 is too small for EfficientNet-Lite"),
    (dict(variant="lite9"), "model.image.variant='lite9'"),
    (dict(tower="cnn"), "init.image_pretrained='efficientnet_lite0' is an EfficientNet-Lite"),
  ],
)
def test_lit_config_mistakes_are_named_before_training(lit_config, change, message):
  lit_config.init.image_pretrained = "efficientnet_lite0"
  if "locked" in change:
    lit_config.model.image.locked = change["locked"]
  if "scale" in change:
    lit_config.optim.image_backbone_lr_scale = change["scale"]
    lit_config.model.image.locked = False
  if "image_size" in change:
    lit_config.data.image_size = change["image_size"]
  if "variant" in change:
    lit_config.model.image.variant = change["variant"]
  if "tower" in change:
    lit_config.model.image.tower = change["tower"]
    lit_config.data.cached_views = 0
    lit_config.model.image.update(
      dict(widths=(8,), depths=(1,), norm="group", stem="conv", stem_stride=2)
    )
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate(lit_config, num_devices=8)


def test_pretrained_weights_fill_the_backbone_and_leave_the_projection(lit_state, lite0_file):
  lit_config, fresh = lit_state
  lit_config = lit_config.copy_and_resolve_references()
  lit_config.init.image_pretrained = str(lite0_file)
  state = init_towers(fresh, lit_config)
  _, pretrained = load_image_backbone(str(lite0_file))
  for collection in ("params", "batch_stats"):
    jax.tree.map(
      np.testing.assert_array_equal,
      state.variables[collection]["image_encoder"]["backbone"],
      pretrained[collection],
    )
  np.testing.assert_array_equal(
    state.params["image_encoder"]["proj"]["kernel"], fresh.params["image_encoder"]["proj"]["kernel"]
  )


def test_pretrained_file_of_another_variant_is_refused_by_name(lite0_file):
  with pytest.raises(WeightsError, match=f"{lite0_file.name} does not hold the EfficientNet-lite1"):
    load_image_backbone(str(lite0_file), "lite1")


def _locked_text(config, cache_dir):
  """The tiny CLIP with its text tower locked (no dropout) and its caption features cached."""
  config.optim.text_backbone_lr_scale = 0.0
  config.model.text.dropout_rate = 0.0
  config.data.cached_text = True
  config.data.feature_cache_dir = str(cache_dir)
  return config


def test_a_step_on_cached_caption_features_equals_a_step_that_runs_the_locked_text_tower(
  tiny_config, tmp_path
):
  config = _locked_text(tiny_config, tmp_path)
  _, state = init_state(config)
  images = np.random.default_rng(1).normal(size=(config.batch_size, 16, 16, 3)).astype(np.float32)
  batch = _batch(config, images)
  text_tower, _ = feature_cache.locked_text_tower(config, state.variables)
  tokens = batch["tokens"].reshape(config.batch_size, -1)
  features = np.asarray(text_tower(tokens)).reshape(*batch["tokens"].shape[:2], -1)
  key = jax.random.key(0)
  from_tokens, _ = make_p_train_step(_uncached(config), state.params)(replicate(state), batch, key)
  with_features = {"image": batch["image"], "text_features": features, "label": batch["label"]}
  from_features, _ = make_p_train_step(config, state.params)(replicate(state), with_features, key)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4),
    unreplicate(from_tokens).params,
    unreplicate(from_features).params,
  )


def test_cached_captions_stay_with_their_images(tmp_path):
  source = CaptionedShapes("train", 5, image_size=16)
  # A stand-in text tower: each caption's features are its token ids, so rows can be told apart.
  tokenize = lambda texts: np.array([[hash(t) % 1000, len(t)] for t in texts], np.float32)
  features = feature_cache.caption_features(
    source, tokenize, "tok", lambda x: x, "w", str(tmp_path), batch_size=3
  )
  cached = CachedFeatureSource(source, text_features_MF=features)
  for index in range(len(source)):
    example = cached[index]
    assert "captions" not in example and example["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(example["text_features"], tokenize(source.captions(index)))
  with pytest.raises(ValueError, match="caption feature rows"):
    CachedFeatureSource(source, text_features_MF=features[:-1])


@pytest.mark.slow
def test_training_with_both_towers_locked_and_cached_leaves_them_as_they_were(lit_config, tmp_path):
  config = _locked_text(lit_config, tmp_path / "features")
  state = loop.train(config, str(tmp_path / "run"))
  cached = {}
  for path in (tmp_path / "features").glob("*.json"):
    description = json.loads(path.read_text())
    kind = "text" if "text_backbone" in description else f"views={description['views']}"
    cached.setdefault(kind, []).append(np.load(path.with_suffix(".npy")).shape)
  # train and val captions; train images in 2 views, val images in the evaluation view
  assert sorted(cached["text"]) == [(5 * config.data.num_val, 16), (5 * config.data.num_train, 16)]
  assert cached["views=2"] == [(config.data.num_train, 2, 1280)]
  assert cached["views=1"] == [(config.data.num_val, 1, 1280)]
  _, fresh = init_state(config)
  for tower in ("image_encoder", "text_encoder"):
    locked = {k: v for k, v in state.params[tower].items() if k != "proj"}
    jax.tree.map(
      np.testing.assert_array_equal,
      locked,
      {k: v for k, v in fresh.params[tower].items() if k != "proj"},
    )
  records = [r for r in read_metrics(str(tmp_path / "run")) if "val/rsum" in r]
  assert records and all(np.isfinite(r["val/rsum"]) for r in records)


def test_caption_features_cut_padding_without_changing_the_features(tmp_path):
  """Captions are embedded in length-sorted batches cut to their longest: the same features as
  embedding every caption padded to the full length, each on its own row."""
  tower = TextTransformer(
    vocab_size=50, max_len=24, width=16, num_layers=1, num_heads=2, mlp_dim=32, embed_dim=None
  )
  variables = tower.init(jax.random.key(0), np.ones((1, 24), np.int32))
  apply = jax.jit(lambda tokens: tower.apply(variables, tokens))

  def tokenize(texts):  # lengths 1..20, so batches are cut to different widths
    tokens = np.zeros((len(texts), 24), np.int32)
    for row, text in enumerate(texts):
      tokens[row, : len(text) % 20 + 1] = np.arange(len(text) % 20 + 1) % 49 + 1
    return tokens

  source = CaptionedShapes("train", 7, image_size=16)
  cached = feature_cache.caption_features(
    source, tokenize, "tok", apply, "w", str(tmp_path), batch_size=4
  )
  captions = [c for index in range(len(source)) for c in source.captions(index)]
  np.testing.assert_allclose(cached, apply(tokenize(captions)), atol=2e-6)


def test_evaluation_on_cached_features_equals_the_full_towers(lit_state):
  """eval.py and the loop's evaluators read a locked backbone's cached features of a split: the
  embeddings are the full tower's on the images (the projection of the same pooled features)."""
  from jclip.data.sources import make_source
  from jclip.evaluation.embedding import EvalSplit, Predictor
  from jclip.runs.tokenizers import new_run_tokenizer
  from jclip.tasks import build_model

  config, state = lit_state
  source = make_source(config.data, "val")
  tokenizer = new_run_tokenizer(config, make_source(config.data, "train"))
  embedded = {}
  for name, run_config in (("cached", config), ("full", _uncached(config))):
    predictor = Predictor(build_model(run_config), tokenizer, run_config)
    assert ("image_features" in predictor.inputs) == (name == "cached")
    split = EvalSplit(source, run_config, tokenizer, keep_views=False)
    embedded[name] = split.embed(predictor, state.variables, batch_size=8)
  np.testing.assert_allclose(
    embedded["cached"].image_emb_ND, embedded["full"].image_emb_ND, rtol=1e-5, atol=1e-5
  )
  np.testing.assert_array_equal(embedded["cached"].text_emb_MD, embedded["full"].text_emb_MD)
