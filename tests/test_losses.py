"""clip_loss: the formula (one or several captions per image), its limits, and sharded ==
single-device for values and gradients. siglip_loss: the formula and its gradients against NumPy,
its limits, sharded == single-device, and the ring's blocks: no [B, N] array on any device."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jclip.losses import classification_loss, clip_loss, siglip_loss
from jclip.models.clip import l2_normalize

NUM_DEVICES = 8
LOCAL_BATCH = 3


def _random_unit(rng, n, d=16):
  return np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(n, d)), jnp.float32)))


def _numpy_clip_loss(img, txt, scale):
  """The textbook formula, written independently in NumPy (float64)."""
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T

  def ce(logits_NN):  # mean over rows of -log softmax(logits)[i, i]
    shifted = logits_NN - logits_NN.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_softmax))

  return 0.5 * (ce(logits) + ce(logits.T))


def _numpy_multi_caption_loss(img, txt, scale):
  """K captions per image (rows i*K ... i*K + K - 1 of txt belong to image i), in NumPy (float64):
  each image's term averages -log p over its K right captions; each caption has one right image."""
  k = len(txt) // len(img)
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T  # [B, B*K]

  def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

  owner = np.arange(len(txt)) // k
  i2t = -np.mean([log_softmax(logits)[owner[j], j] for j in range(len(txt))])
  t2i = -np.mean([log_softmax(logits.T)[j, owner[j]] for j in range(len(txt))])
  return 0.5 * (i2t + t2i)


def _loss_of(img, txt, t, axis_name=None):
  return clip_loss(img, txt, jnp.exp(t), axis_name)


def test_matches_numpy_formula():
  rng = np.random.default_rng(0)
  img, txt = _random_unit(rng, 10), _random_unit(rng, 10)
  loss, metrics = clip_loss(img, txt, 12.5)
  np.testing.assert_allclose(loss, _numpy_clip_loss(img, txt, 12.5), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)


@pytest.mark.parametrize("captions_per_image", [2, 5])
def test_several_captions_per_image_match_numpy_formula(captions_per_image):
  rng = np.random.default_rng(captions_per_image)
  img, txt = _random_unit(rng, 4), _random_unit(rng, 4 * captions_per_image)
  loss, metrics = clip_loss(img, txt, 9.0)
  np.testing.assert_allclose(loss, _numpy_multi_caption_loss(img, txt, 9.0), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)


def test_several_captions_accuracy_accepts_any_right_caption():
  img = np.eye(3, dtype=np.float32)
  mix = lambda a, b: 0.8 * img[a] + 0.6 * img[b]  # unit length, closest to image a
  # Two captions per image: columns 0-1 are image 0's, 2-3 image 1's, 4-5 image 2's.
  txt = np.stack([mix(1, 2), img[0], img[1], img[2], mix(2, 0), mix(1, 2)])
  _, metrics = clip_loss(img, txt, 10.0)
  # Image 0's best column is 1 and image 1's is 2 (their own captions); image 2's is 3 (image 1's).
  assert metrics["i2t_accuracy"] == pytest.approx(2 / 3)
  # Captions 1, 2 and 4 score their own image highest; 0, 3 and 5 another one.
  assert metrics["t2i_accuracy"] == pytest.approx(3 / 6)


def test_captions_that_do_not_split_over_the_images_are_refused():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="7 captions for 3 images"):
    clip_loss(_random_unit(rng, 3), _random_unit(rng, 7), 10.0)


def test_aligned_pairs_with_large_scale_give_near_zero_loss():
  emb = np.eye(8, dtype=np.float32)  # orthogonal unit vectors: image i == text i, others at 0
  loss, metrics = clip_loss(emb, emb, 100.0)
  assert loss < 1e-6
  assert metrics["i2t_accuracy"] == 1.0 and metrics["t2i_accuracy"] == 1.0


@pytest.mark.parametrize("n", [2, 7, 32])
def test_identical_embeddings_give_log_n(n):
  emb = np.tile(_random_unit(np.random.default_rng(n), 1), (n, 1))  # every pair looks the same
  loss, _ = clip_loss(emb, emb, 30.0)
  np.testing.assert_allclose(loss, np.log(n), rtol=1e-5)


def test_logits_are_float32_for_bfloat16_embeddings():
  rng = np.random.default_rng(1)
  img = jnp.asarray(_random_unit(rng, 6), jnp.bfloat16)
  txt = jnp.asarray(_random_unit(rng, 6), jnp.bfloat16)
  loss, _ = clip_loss(img, txt, 100.0)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(
    loss,
    _numpy_clip_loss(np.asarray(img, np.float32), np.asarray(txt, np.float32), 100.0),
    rtol=1e-5,
  )


def test_accuracy_counts_rows_whose_match_scores_highest():
  img = np.eye(4, dtype=np.float32)
  txt = img[[0, 1, 3, 2]]  # pairs 2 and 3 are swapped, in both directions
  _, metrics = clip_loss(img, txt, 10.0)
  assert metrics["i2t_accuracy"] == 0.5 and metrics["t2i_accuracy"] == 0.5


@pytest.fixture(scope="module", params=[1, 3], ids=["1caption", "3captions"])
def batch(request):
  """Embeddings of a global batch of NUM_DEVICES * LOCAL_BATCH images with K captions each."""
  rng = np.random.default_rng(42)
  n = NUM_DEVICES * LOCAL_BATCH
  return _random_unit(rng, n), _random_unit(rng, n * request.param), jnp.float32(np.log(1 / 0.07))


def _single_device(batch):
  img, txt, t = batch
  (loss, metrics), grads = jax.value_and_grad(_loss_of, argnums=(0, 1, 2), has_aux=True)(
    img, txt, t
  )
  return loss, metrics, grads


def test_pmap_loss_and_gradients_equal_single_device(batch):
  assert jax.local_device_count() == NUM_DEVICES, "conftest must force 8 CPU devices"
  img, txt, t = batch
  loss, metrics, (g_img, g_txt, g_t) = _single_device(batch)

  def sharded(img_shard, txt_shard, t):
    (share, metrics), grads = jax.value_and_grad(_loss_of, argnums=(0, 1, 2), has_aux=True)(
      img_shard, txt_shard, t, "batch"
    )
    # Shares and the replicated temperature's gradients add up over devices (jclip/losses.py).
    return lax.psum(share, "batch"), metrics, (grads[0], grads[1], lax.psum(grads[2], "batch"))

  # Each device holds its images and their captions (image by image), as the pipeline lays them out.
  shape = (NUM_DEVICES, -1, img.shape[-1])
  p_loss, p_metrics, (p_img, p_txt, p_t) = jax.pmap(
    sharded, axis_name="batch", in_axes=(0, 0, None)
  )(img.reshape(shape), txt.reshape(shape), t)

  np.testing.assert_allclose(p_loss, np.full(NUM_DEVICES, loss), rtol=1e-5)
  np.testing.assert_allclose(p_metrics["loss"], np.full(NUM_DEVICES, loss), rtol=1e-5)
  for name in ("i2t_accuracy", "t2i_accuracy"):
    np.testing.assert_allclose(p_metrics[name], np.full(NUM_DEVICES, metrics[name]), rtol=1e-6)
  np.testing.assert_allclose(p_img.reshape(g_img.shape), g_img, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p_txt.reshape(g_txt.shape), g_txt, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p_t, np.full(NUM_DEVICES, g_t), rtol=1e-5)


def test_shard_map_loss_and_gradients_equal_single_device(batch):
  img, txt, t = batch
  loss, _, (g_img, g_txt, g_t) = _single_device(batch)
  mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))

  def sharded(img_shard, txt_shard, t):
    (share, _), grads = jax.value_and_grad(_loss_of, argnums=(0, 1, 2), has_aux=True)(
      img_shard, txt_shard, t, "batch"
    )
    # shard_map already sums the replicated temperature's gradient over the axis.
    return lax.psum(share, "batch"), grads

  fn = jax.jit(
    jax.shard_map(
      sharded,
      mesh=mesh,
      in_specs=(P("batch"), P("batch"), P()),
      out_specs=(P(), (P("batch"), P("batch"), P())),
    )
  )
  sharding = NamedSharding(mesh, P("batch"))
  s_loss, (s_img, s_txt, s_t) = fn(jax.device_put(img, sharding), jax.device_put(txt, sharding), t)
  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(s_img, g_img, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(s_txt, g_txt, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(s_t, g_t, rtol=1e-5)


def test_pmap_classification_loss_and_gradients_equal_single_device():
  """The classifiers' loss follows clip_loss's convention: each device's share psums to the loss
  of the concatenated batch, and the shares' gradients are the single-device gradients' slices."""
  rng = np.random.default_rng(3)
  n, num_classes = NUM_DEVICES * LOCAL_BATCH, 5
  logits = jnp.asarray(3 * rng.normal(size=(n, num_classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, size=n), jnp.int32)
  loss_and_grad = jax.value_and_grad(classification_loss, has_aux=True)
  (loss, metrics), grads = loss_and_grad(logits, labels)

  def sharded(logits_shard, labels_shard):
    (share, metrics), grads = loss_and_grad(logits_shard, labels_shard, "batch")
    return lax.psum(share, "batch"), metrics, grads

  shape = (NUM_DEVICES, LOCAL_BATCH)
  p_loss, p_metrics, p_grads = jax.pmap(sharded, axis_name="batch")(
    logits.reshape(*shape, num_classes), labels.reshape(shape)
  )
  np.testing.assert_allclose(p_loss, np.full(NUM_DEVICES, loss), rtol=1e-5)
  np.testing.assert_allclose(p_grads.reshape(grads.shape), grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p_metrics["loss"], np.full(NUM_DEVICES, loss), rtol=1e-5)
  np.testing.assert_allclose(
    p_metrics["accuracy"], np.full(NUM_DEVICES, metrics["accuracy"]), rtol=1e-6
  )
  assert 0 < metrics["accuracy"] < 1  # the accuracy compared is not a trivial 0 or 1


def _numpy_siglip(img, txt, scale, bias):
  """SigLIP's loss and its gradients, written independently in NumPy (float64): returns (loss,
  d/dimg, d/dtxt, d/dscale, d/dbias). With logits l = scale * img @ txt.T + bias and labels
  z = 2I - 1, loss = -sum log sigmoid(z * l) / N, so dloss/dl = -z * sigmoid(-z * l) / N."""
  img, txt = img.astype(np.float64), txt.astype(np.float64)
  n = len(img)
  cos = img @ txt.T
  z = 2 * np.eye(n) - 1
  zl = z * (scale * cos + bias)
  loss = np.sum(np.logaddexp(0, -zl)) / n  # -log sigmoid(x) = log(1 + e^-x)
  g = -z / (1 + np.exp(zl)) / n
  return loss, scale * g @ txt, scale * g.T @ img, np.sum(g * cos), np.sum(g)


def test_numpy_siglip_gradients_match_finite_differences():
  """The reference's analytic gradients, checked against central differences of its own loss."""
  rng = np.random.default_rng(5)
  img, txt = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  args = [img, txt, 3.0, -2.0]
  analytic = _numpy_siglip(*args)[1:]
  h = 1e-6
  for arg, want in enumerate(analytic):
    value = np.asarray(args[arg], np.float64)
    numeric = np.zeros_like(value)
    for index in np.ndindex(value.shape):
      step = np.zeros_like(value)
      step[index] = h
      plus, minus = list(args), list(args)
      plus[arg], minus[arg] = value + step, value - step
      numeric[index] = (_numpy_siglip(*plus)[0] - _numpy_siglip(*minus)[0]) / (2 * h)
    np.testing.assert_allclose(numeric, want, rtol=1e-6, atol=1e-9)


def test_siglip_loss_and_gradients_match_numpy():
  rng = np.random.default_rng(6)
  img, txt = _random_unit(rng, 10), _random_unit(rng, 10)
  (loss, metrics), grads = jax.value_and_grad(siglip_loss, argnums=(0, 1, 2, 3), has_aux=True)(
    img, txt, 7.5, -3.0
  )
  want_loss, *want_grads = _numpy_siglip(img, txt, 7.5, -3.0)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)
  for got, want in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  assert metrics["logit_scale"] == 7.5 and metrics["logit_bias"] == -3.0


def test_siglip_accuracy_matches_argmax_of_rows_and_columns():
  rng = np.random.default_rng(7)
  img, txt = _random_unit(rng, 12, d=4), _random_unit(rng, 12, d=4)
  _, metrics = siglip_loss(img, txt, 10.0, -10.0)
  cos = img @ txt.T
  assert metrics["i2t_accuracy"] == pytest.approx(np.mean(cos.argmax(1) == np.arange(12)))
  assert metrics["t2i_accuracy"] == pytest.approx(np.mean(cos.argmax(0) == np.arange(12)))
  assert 0 < metrics["i2t_accuracy"] < 1 and 0 < metrics["t2i_accuracy"] < 1


def test_siglip_aligned_pairs_with_large_scale_give_near_zero_loss():
  emb = np.eye(8, dtype=np.float32)  # positives at cosine 1, negatives at 0
  # Logits 100 - 50 = 50 for the positives, -50 for the negatives: every pair is classified right.
  loss, metrics = siglip_loss(emb, emb, 100.0, -50.0)
  assert loss < 1e-6
  assert metrics["i2t_accuracy"] == 1.0 and metrics["t2i_accuracy"] == 1.0


def test_siglip_accuracy_counts_ties_as_misses():
  """With every embedding alike, every pair scores the same: no item's own pair is above the
  others, so no item counts as right (an argmax would credit whichever index came first)."""
  emb = np.tile(_random_unit(np.random.default_rng(8), 1), (6, 1))
  _, metrics = siglip_loss(emb, emb, 10.0, -10.0)
  assert metrics["i2t_accuracy"] == 0.0 and metrics["t2i_accuracy"] == 0.0


def test_siglip_paper_initialisation_is_dominated_by_the_positives():
  """At t = 10, b = -10 and orthogonal embeddings every logit is -10: each negative costs
  log(1 + e^-10) = 4.5e-5, each positive log(1 + e^10) = 10.00005, so the loss is about 10 + (N-1)
  * 4.5e-5: training starts from "no pair matches", not from a large push on the N^2 negatives."""
  n = 16
  basis = np.eye(2 * n, dtype=np.float32)
  loss, _ = siglip_loss(basis[:n], basis[n:], 10.0, -10.0)  # every cosine 0
  np.testing.assert_allclose(loss, np.logaddexp(0, 10) + (n - 1) * np.logaddexp(0, -10), rtol=1e-6)


def test_siglip_refuses_several_captions_per_image():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="6 captions for 3 images"):
    siglip_loss(_random_unit(rng, 3), _random_unit(rng, 6), 10.0, -10.0)


def test_siglip_logits_are_float32_for_bfloat16_embeddings():
  rng = np.random.default_rng(1)
  img = jnp.asarray(_random_unit(rng, 6), jnp.bfloat16)
  txt = jnp.asarray(_random_unit(rng, 6), jnp.bfloat16)
  loss, _ = siglip_loss(img, txt, 10.0, -10.0)
  assert loss.dtype == jnp.float32
  want = _numpy_siglip(np.asarray(img, np.float32), np.asarray(txt, np.float32), 10.0, -10.0)[0]
  np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.fixture(scope="module")
def siglip_batch():
  """A global batch of NUM_DEVICES * LOCAL_BATCH pairs, log-scale t and bias b."""
  rng = np.random.default_rng(43)
  n = NUM_DEVICES * LOCAL_BATCH
  # Captions near their images, so that the accuracies are neither 0 nor 1.
  img = _random_unit(rng, n)
  txt = np.asarray(l2_normalize(img + 1.2 * rng.normal(size=img.shape).astype(np.float32)))
  return img, txt, jnp.float32(np.log(10.0)), jnp.float32(-5.0)


def _siglip_of(img, txt, t, b, axis_name=None):
  return siglip_loss(img, txt, jnp.exp(t), b, axis_name)


def _siglip_grad_fn(axis_name=None):
  return lambda *args: jax.value_and_grad(_siglip_of, argnums=(0, 1, 2, 3), has_aux=True)(
    *args, axis_name
  )


def test_siglip_pmap_loss_metrics_and_gradients_equal_single_device(siglip_batch):
  img, txt, t, b = siglip_batch
  (loss, metrics), grads = _siglip_grad_fn()(img, txt, t, b)
  assert 0 < metrics["i2t_accuracy"] < 1 and 0 < metrics["t2i_accuracy"] < 1

  def sharded(img_shard, txt_shard, t, b):
    (share, metrics), (g_img, g_txt, g_t, g_b) = _siglip_grad_fn("batch")(
      img_shard, txt_shard, t, b
    )
    # Shares and the replicated parameters' gradients add up over devices.
    return (
      lax.psum(share, "batch"),
      metrics,
      (g_img, g_txt, lax.psum(g_t, "batch"), lax.psum(g_b, "batch")),
    )

  shape = (NUM_DEVICES, LOCAL_BATCH, -1)
  p_loss, p_metrics, p_grads = jax.pmap(sharded, axis_name="batch", in_axes=(0, 0, None, None))(
    img.reshape(shape), txt.reshape(shape), t, b
  )
  np.testing.assert_allclose(p_loss, np.full(NUM_DEVICES, loss), rtol=1e-5)
  for name in ("loss", "i2t_accuracy", "t2i_accuracy"):
    np.testing.assert_allclose(
      p_metrics[name], np.full(NUM_DEVICES, metrics[name]), rtol=1e-5, err_msg=name
    )
  for got, want in zip(p_grads[:2], grads[:2], strict=True):
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-7)
  for got, want in zip(p_grads[2:], grads[2:], strict=True):
    np.testing.assert_allclose(got, np.full(NUM_DEVICES, want), rtol=1e-5)


def test_siglip_shard_map_loss_and_gradients_equal_single_device(siglip_batch):
  img, txt, t, b = siglip_batch
  (loss, _), grads = _siglip_grad_fn()(img, txt, t, b)
  mesh = jax.make_mesh((NUM_DEVICES,), ("batch",))

  def sharded(img_shard, txt_shard, t, b):
    (share, _), grads = _siglip_grad_fn("batch")(img_shard, txt_shard, t, b)
    return lax.psum(share, "batch"), grads  # shard_map sums the replicated t's and b's gradients

  fn = jax.jit(
    jax.shard_map(
      sharded,
      mesh=mesh,
      in_specs=(P("batch"), P("batch"), P(), P()),
      out_specs=(P(), (P("batch"), P("batch"), P(), P())),
    )
  )
  sharding = NamedSharding(mesh, P("batch"))
  s_loss, s_grads = fn(jax.device_put(img, sharding), jax.device_put(txt, sharding), t, b)
  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  for got, want in zip(s_grads, grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _intermediate_shapes(jaxpr):
  """(primitive name, output shape) of every equation, inside scans, remat and jit too."""
  found = []
  for eqn in jaxpr.eqns:
    found += [(eqn.primitive.name, tuple(var.aval.shape)) for var in eqn.outvars]
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _intermediate_shapes(sub)
  return found


def test_siglip_ring_scores_b_by_b_blocks_and_never_holds_a_b_by_n_array():
  """The program of one device (value and gradients), traced for 8 devices of B = 16 pairs in
  D = 4 dimensions (N = 128): every similarity block is [B, B], and no intermediate, forward or
  backward, holds more numbers than the larger of one block (B * B = 256) and the texts of the
  whole batch (N * D = 512), which the ring passes through the device and the backward pass keeps.
  A [B, N] strip would hold 2,048, the P - 1 visiting blocks' logits kept for the backward pass
  1,792. The texts go round the ring once forward and once back (the gradients), not again to
  recompute the logits."""
  local_batch, dim = 16, 4
  n = NUM_DEVICES * local_batch
  emb_BD = jax.ShapeDtypeStruct((local_batch, dim), jnp.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  jaxpr = jax.make_jaxpr(_siglip_grad_fn("batch"), axis_env=[("batch", NUM_DEVICES)])(
    emb_BD, emb_BD, scalar, scalar
  ).jaxpr
  shapes = _intermediate_shapes(jaxpr)
  products = {shape for name, shape in shapes if name == "dot_general"}
  assert (local_batch, local_batch) in products
  assert all(n not in shape for shape in products), products
  biggest = max(shapes, key=lambda item: np.prod(item[1]))
  assert np.prod(biggest[1]) <= max(local_batch * local_batch, n * dim), biggest
  assert [shape for name, shape in shapes if name == "ppermute"].count((local_batch, dim)) == 2
