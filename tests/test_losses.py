"""clip_loss: the formula (one or several captions per image), its limits, and sharded ==
single-device for values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jclip.losses import classification_loss, clip_loss
from jclip.models.clip import l2_normalize

NUM_DEVICES = 8
LOCAL_BATCH = 3


def _random_unit(rng, n, d=16):
  return np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(n, d)), jnp.float32)))


def _numpy_clip_loss(img, txt, scale):
  """The textbook formula, written independently in NumPy (float64)."""
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T

  def ce(l):  # mean over rows of -log softmax(l)[i, i]
    l = l - l.max(axis=1, keepdims=True)
    log_softmax = l - np.log(np.exp(l).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_softmax))

  return 0.5 * (ce(logits) + ce(logits.T))


def _numpy_multi_caption_loss(img, txt, scale):
  """K captions per image (rows i*K ... i*K + K - 1 of txt belong to image i), in NumPy (float64):
  each image's term averages -log p over its K right captions; each caption has one right image."""
  k = len(txt) // len(img)
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T  # [B, B*K]

  def log_softmax(l):
    l = l - l.max(axis=1, keepdims=True)
    return l - np.log(np.exp(l).sum(axis=1, keepdims=True))

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
  np.testing.assert_allclose(loss, _numpy_clip_loss(np.asarray(img, np.float32),
                                                    np.asarray(txt, np.float32), 100.0), rtol=1e-5)


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
      img, txt, t)
  return loss, metrics, grads


def test_pmap_loss_and_gradients_equal_single_device(batch):
  assert jax.local_device_count() == NUM_DEVICES, "conftest must force 8 CPU devices"
  img, txt, t = batch
  loss, metrics, (g_img, g_txt, g_t) = _single_device(batch)

  def sharded(img_shard, txt_shard, t):
    (share, metrics), grads = jax.value_and_grad(
        _loss_of, argnums=(0, 1, 2), has_aux=True)(img_shard, txt_shard, t, "batch")
    # Shares and the replicated temperature's gradients add up over devices (jclip/losses.py).
    return lax.psum(share, "batch"), metrics, (grads[0], grads[1], lax.psum(grads[2], "batch"))

  # Each device holds its images and their captions (image by image), as the pipeline lays them out.
  shape = (NUM_DEVICES, -1, img.shape[-1])
  p_loss, p_metrics, (p_img, p_txt, p_t) = jax.pmap(
      sharded, axis_name="batch", in_axes=(0, 0, None))(img.reshape(shape), txt.reshape(shape), t)

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
        img_shard, txt_shard, t, "batch")
    # shard_map already sums the replicated temperature's gradient over the axis.
    return lax.psum(share, "batch"), grads

  fn = jax.jit(jax.shard_map(sharded, mesh=mesh, in_specs=(P("batch"), P("batch"), P()),
                             out_specs=(P(), (P("batch"), P("batch"), P()))))
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
      logits.reshape(*shape, num_classes), labels.reshape(shape))
  np.testing.assert_allclose(p_loss, np.full(NUM_DEVICES, loss), rtol=1e-5)
  np.testing.assert_allclose(p_grads.reshape(grads.shape), grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p_metrics["loss"], np.full(NUM_DEVICES, loss), rtol=1e-5)
  np.testing.assert_allclose(p_metrics["accuracy"], np.full(NUM_DEVICES, metrics["accuracy"]),
                             rtol=1e-6)
  assert 0 < metrics["accuracy"] < 1  # the accuracy compared is not a trivial 0 or 1
