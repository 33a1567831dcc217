"""The towers and CLIP: shapes, pooling semantics, presets, temperature."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclip.config.derived import text_architecture
from jclip.models.clip import CLIP
from jclip.models.cnn import CNN
from jclip.models.text import TEXT_PRESETS, TextTransformer, masked_mean
from jclip.tasks import build_clip

DISTILBERT_BASE_PARAMS = 66_362_880  # DistilBertModel (embeddings + 6 blocks), Sanh et al. 2019


def _tiny_text(**kwargs):
  defaults = dict(
    vocab_size=50, max_len=16, width=16, num_layers=2, num_heads=2, mlp_dim=32, embed_dim=8
  )
  return TextTransformer(**{**defaults, **kwargs})


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_cnn_output_shape_and_linear_projection(norm):
  model = CNN(widths=(8, 16), depths=(1, 2), embed_dim=12, norm=norm)
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), images)
  assert ("batch_stats" in variables) == (norm == "batch")
  out = model.apply(variables, images)
  assert out.shape == (4, 12)
  # The projection has no activation: outputs take both signs.
  assert (out < 0).any() and (out > 0).any()


def test_cnn_batchnorm_updates_running_stats_in_training():
  model = CNN(widths=(8,), depths=(1,), embed_dim=4, norm="batch")
  images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) + 3.0
  variables = model.init(jax.random.key(1), images)
  _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert len(before) == len(after) == 6  # mean and var of the stem's and the block's 2 norms
  assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_inverted_cnn_halves_the_map_between_stages_and_its_blocks_start_as_the_identity():
  """Patch stem 4 on 16 px: a 4x4 map at width 8, one 2x2 merge to 2x2 at width 16. Each inverted
  block's last norm starts at scale 0, so at init a stage's output is its input (the stem's, or
  the merge's); the depthwise and matmul weights are there and get gradients."""
  model = CNN(
    widths=(8, 16),
    depths=(2, 1),
    embed_dim=None,
    stem="patch",
    stem_stride=4,
    block="inverted",
    depthwise_kernel=3,
    expand=2,
  )
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  variables = model.init(jax.random.key(1), images)
  params = variables["params"]
  assert sorted(params) == [
    "stage1_block1",
    "stage1_block2",
    "stage2_block1",
    "stage2_merge",
    "stem",
    "stem_norm",
  ]
  assert params["stage1_block1"]["depthwise"]["kernel"].shape == (3, 3, 1, 8)
  assert params["stage1_block1"]["expand"]["kernel"].shape == (1, 1, 8, 16)
  assert params["stage2_merge"]["merge"]["kernel"].shape == (1, 1, 4 * 8, 16)

  _, hidden = model.apply(variables, images, capture_intermediates=True)
  hidden = hidden["intermediates"]
  np.testing.assert_allclose(
    hidden["stage1_block2"]["__call__"][0],
    jax.nn.relu(hidden["stem_norm"]["__call__"][0]),
    atol=1e-6,
  )
  np.testing.assert_allclose(
    hidden["stage2_block1"]["__call__"][0], hidden["stage2_merge"]["__call__"][0], atol=1e-6
  )
  assert hidden["stage2_block1"]["__call__"][0].shape == (3, 2, 2, 16)

  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images) ** 2))(params)
  block = grads["stage1_block1"]
  assert float(jnp.abs(block["norm2"]["scale"]).sum()) > 0  # the zero scale will move
  assert float(jnp.abs(grads["stem"]["kernel"]).sum()) > 0


def test_masked_mean_ignores_padding_and_survives_empty_rows():
  x = jnp.arange(12.0).reshape(2, 3, 2)
  mask = jnp.array([[True, True, False], [False, False, False]])
  np.testing.assert_allclose(masked_mean(x, mask), [[1.0, 2.0], [0.0, 0.0]])


@pytest.mark.parametrize("pre_norm", [True, False])
def test_text_embedding_does_not_depend_on_padding_length(pre_norm):
  model = _tiny_text(pre_norm=pre_norm, embed_norm=not pre_norm)
  short = jnp.array([[5, 6, 7, 0, 0]])
  long = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  variables = model.init(jax.random.key(0), short)
  np.testing.assert_allclose(
    model.apply(variables, short), model.apply(variables, long), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("pre_norm", [True, False])
def test_text_embedding_is_the_projected_mean_over_tokens_no_cls(pre_norm):
  """The embedding is the projection of the mean of the last layer's outputs over the real tokens:
  recomputed here from those outputs, and told apart from first-token (CLS-style) and last-token
  pooling and from a mean that counts the padding too. After attention every position has seen
  every token, so only the last layer's per-position outputs can tell the poolings apart."""
  model = _tiny_text(pre_norm=pre_norm, embed_norm=not pre_norm)
  tokens = jnp.array([[5, 6, 7, 0, 0], [9, 8, 7, 6, 0]])
  variables = model.init(jax.random.key(0), tokens)
  emb, state = model.apply(variables, tokens, capture_intermediates=True)
  intermediates = state["intermediates"]
  last = "final_norm" if pre_norm else f"block{model.num_layers}"  # the pooling's input
  x_BLF = np.asarray(intermediates[last]["__call__"][0])
  proj = variables["params"]["proj"]
  project = lambda pooled_BF: pooled_BF @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
  lengths = [3, 4]
  poolings = {
    "mean over real tokens": np.stack([x_BLF[b, :n].mean(0) for b, n in enumerate(lengths)]),
    "first token": x_BLF[:, 0],
    "last real token": np.stack([x_BLF[b, n - 1] for b, n in enumerate(lengths)]),
    "mean with padding": x_BLF.mean(1),
  }
  candidates = {name: project(pooled) for name, pooled in poolings.items()}
  np.testing.assert_allclose(emb, candidates["mean over real tokens"], rtol=1e-5, atol=1e-6)
  for name, other in candidates.items():
    if name != "mean over real tokens":
      assert np.abs(other - emb).max() > 1e-3, name  # the recomputation discriminates


def test_text_attention_ignores_padding_keys():
  model = _tiny_text()
  tokens = jnp.array([[5, 6, 7, 0, 0]])
  variables = model.init(jax.random.key(0), tokens)
  # Embedding row 0 (padding) is never read by a real token: perturbing it changes nothing.
  perturbed = jax.tree_util.tree_map_with_path(
    lambda path, x: x.at[0].add(5.0) if "token_embed" in jax.tree_util.keystr(path) else x,
    variables,
  )
  np.testing.assert_allclose(
    model.apply(variables, tokens), model.apply(perturbed, tokens), rtol=1e-5, atol=1e-6
  )


def test_text_tower_rejects_sequences_longer_than_its_positions():
  model = _tiny_text(max_len=4)
  with pytest.raises(ValueError, match="max_len"):
    model.init(jax.random.key(0), jnp.ones((1, 6), jnp.int32))


def test_distilbert_preset_matches_distilbert_base_parameter_count():
  preset = TEXT_PRESETS["distilbert"]
  assert (
    preset.num_layers,
    preset.width,
    preset.num_heads,
    preset.mlp_dim,
    preset.max_len,
    preset.vocab_size,
  ) == (6, 768, 12, 3072, 512, 30522)
  model = TextTransformer(embed_dim=512, **vars(preset))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  flat = jax.tree_util.tree_leaves_with_path(shapes["params"])
  transformer = sum(x.size for path, x in flat if "proj" not in jax.tree_util.keystr(path))
  assert abs(transformer / DISTILBERT_BASE_PARAMS - 1) < 0.01


def test_preset_fields_are_overridden_only_where_set(tiny_config):
  architecture = text_architecture(tiny_config)
  assert architecture.num_layers == 1  # set by the tiny config
  assert architecture.pre_norm == TEXT_PRESETS["small"].pre_norm  # left to the preset
  assert architecture.vocab_size == tiny_config.tokenizer.vocab_size  # None: the tokenizer's


def test_clip_outputs_unit_vectors_and_clamped_scale(tiny_config):
  model = build_clip(tiny_config)
  images = jnp.ones((2, 16, 16, 3))
  tokens = jnp.array([[3, 4, 0], [5, 0, 0]])
  variables = model.init(jax.random.key(0), image=images, tokens=tokens)
  img, txt, scale = model.apply(variables, image=images, tokens=tokens)
  np.testing.assert_allclose(jnp.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)
  # Separate encoders give the same vectors as the joint call (galleries are embedded once).
  np.testing.assert_allclose(model.apply(variables, tokens, method=CLIP.encode_text), txt)

  hot = jax.tree_util.tree_map_with_path(
    lambda p, x: x + 10.0 if "log_logit_scale" in jax.tree_util.keystr(p) else x, variables
  )
  assert model.apply(hot, method=CLIP.logit_scale) == pytest.approx(100.0)
  grad_t = jax.grad(lambda v: model.apply(v, method=CLIP.logit_scale))(hot)
  assert grad_t["params"]["log_logit_scale"] == 0.0  # beyond the clamp t stops moving


def test_bfloat16_towers_still_give_float32_unit_embeddings(tiny_config):
  tiny_config.model.dtype = "bfloat16"
  model = build_clip(tiny_config)
  images, tokens = jnp.ones((2, 16, 16, 3)), jnp.array([[3, 4], [5, 0]])
  variables = model.init(jax.random.key(0), image=images, tokens=tokens)
  img, txt, _ = model.apply(variables, image=images, tokens=tokens)
  assert img.dtype == txt.dtype == jnp.float32
  assert math.isclose(float(jnp.linalg.norm(img[0])), 1.0, rel_tol=1e-5)


def test_siglip_clip_has_a_logit_bias_at_the_papers_value_unless_set(tiny_config):
  images, tokens = jnp.ones((2, 16, 16, 3)), jnp.array([[3, 4, 0], [5, 0, 0]])
  softmax = build_clip(tiny_config)
  model = build_clip(tiny_config, logit_bias=True)
  variables = model.init(jax.random.key(0), image=images, tokens=tokens)
  assert variables["params"]["logit_bias"] == -10.0  # no model.init_logit_bias: the paper's
  assert "logit_bias" not in softmax.init(jax.random.key(0), image=images, tokens=tokens)["params"]
  img, txt, scale, bias = model.apply(variables, image=images, tokens=tokens)
  assert bias == -10.0 and scale == pytest.approx(1 / 0.07)
  # The same towers: the encoders (what evaluation calls) give what the softmax model gives.
  without_bias = {"params": {k: v for k, v in variables["params"].items() if k != "logit_bias"}}
  np.testing.assert_array_equal(softmax.apply(without_bias, image=images, tokens=tokens)[0], img)
  np.testing.assert_array_equal(model.apply(variables, tokens, method=CLIP.encode_text), txt)

  tiny_config.model.init_logit_bias = -4.0
  variables = build_clip(tiny_config, logit_bias=True).init(
    jax.random.key(0), image=images, tokens=tokens
  )
  assert variables["params"]["logit_bias"] == -4.0
