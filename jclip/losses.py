"""Contrastive losses, written against an optional named device axis.

`clip_loss` is the symmetric InfoNCE of CLIP (Radford et al. 2021). Without `axis_name` it scores a
batch of B pairs against itself. With `axis_name` (inside `jax.pmap` or `jax.shard_map`) every device
holds B local pairs of a global batch of N = B * P pairs; it gathers the embeddings of all P devices,
scores its own B rows against all N columns, and finds its matching column at `axis_index * B + i`.

Convention for the sharded value: each device returns its *share* of the global loss (its local mean
divided by P), so that

    global loss      = psum(share) over the axis,
    global gradients = psum(grad of share) over the axis,

exactly as on one device with the concatenated batch. The gather's backward pass (a reduce-scatter)
sends every device the gradient that the other devices' rows put on its embeddings, which is why the
shares' gradients already account for the whole global batch. docs/contrastive_loss.md works this
through with numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _cross_entropy(logits_BN, labels_B):
  """Mean softmax cross-entropy with integer labels, in float32. Labels [B, K] give each row K
  right columns: the row's loss is then the mean of its K cross-entropies."""
  log_probs_BN = jax.nn.log_softmax(logits_BN.astype(jnp.float32), axis=-1)
  labels_BK = labels_B.reshape(labels_B.shape[0], -1)
  return -jnp.mean(jnp.take_along_axis(log_probs_BN, labels_BK, axis=-1))


def _accuracy(logits_BN, labels_B, columns_per_label: int = 1):
  """How often a row's best column belongs to its label; label c owns columns c*k ... c*k + k-1."""
  best_B = jnp.argmax(logits_BN, axis=-1) // columns_per_label
  return jnp.mean((best_B == labels_B).astype(jnp.float32))


def clip_loss(image_emb_BD, text_emb_MD, logit_scale, axis_name=None):
  """Symmetric InfoNCE over the (global) batch, with one or several captions per image.

  Args:
    image_emb_BD: L2-normalised image embeddings of this device's B images.
    text_emb_MD: L2-normalised text embeddings of their M = K * B captions, K per image and image
      by image: rows i*K ... i*K + K - 1 describe image i (K = 1: row i is the caption of image i).
    logit_scale: the multiplier exp(t), already clamped (a scalar).
    axis_name: the pmap/shard_map axis to gather over, or None for a single device.

  With K > 1 every image has K right captions among the N * K of the global batch, so its
  image-to-text term is the mean of K cross-entropies, one per right caption (a target spread
  evenly over them); each caption still has one right image. K = 1 is CLIP's loss exactly.
  docs/contrastive_loss.md, section 18, works an example.

  Returns:
    (loss, metrics). `loss` is differentiable: the batch loss on one device, or this device's share
    of the global loss with `axis_name` (see the module docstring). `metrics` are global values,
    identical on every device and not differentiated: `loss`, `i2t_accuracy` and `t2i_accuracy`
    (in-batch top-1: how often the best-scoring item of the other kind is a right one) and
    `logit_scale`.
  """
  local_batch, num_texts = image_emb_BD.shape[0], text_emb_MD.shape[0]
  captions_per_image, remainder = divmod(num_texts, local_batch)
  if remainder or not captions_per_image:
    raise ValueError(f"{num_texts} captions for {local_batch} images: every image needs the same "
                     "number of captions, image by image.")
  image_emb_BD = image_emb_BD.astype(jnp.float32)
  text_emb_MD = text_emb_MD.astype(jnp.float32)
  if axis_name is None:
    all_image_emb_ND, all_text_emb_XD, offset, num_shards = image_emb_BD, text_emb_MD, 0, 1
  else:
    all_image_emb_ND = lax.all_gather(image_emb_BD, axis_name, tiled=True)
    all_text_emb_XD = lax.all_gather(text_emb_MD, axis_name, tiled=True)  # X = N * K captions
    offset = lax.axis_index(axis_name) * local_batch
    num_shards = lax.axis_size(axis_name)

  # Row i of each matrix is one of this device's items scored against all items of the other kind.
  logits_i2t_BX = logit_scale * image_emb_BD @ all_text_emb_XD.T
  logits_t2i_MN = logit_scale * text_emb_MD @ all_image_emb_ND.T
  image_index_B = offset + jnp.arange(local_batch)  # each image's place in the global batch
  # Image i's captions sit at columns i*K ... i*K + K - 1 of the gathered captions.
  right_captions_BK = (image_index_B[:, None] * captions_per_image +
                       jnp.arange(captions_per_image)[None, :])
  caption_image_M = offset + jnp.arange(num_texts) // captions_per_image

  local_loss = 0.5 * (_cross_entropy(logits_i2t_BX, right_captions_BK) +
                      _cross_entropy(logits_t2i_MN, caption_image_M))
  metrics = {
      "loss": local_loss,
      "i2t_accuracy": _accuracy(logits_i2t_BX, image_index_B, captions_per_image),
      "t2i_accuracy": _accuracy(logits_t2i_MN, caption_image_M),
  }
  if axis_name is not None:
    metrics = lax.pmean(metrics, axis_name)
  metrics = jax.lax.stop_gradient(metrics)
  metrics["logit_scale"] = jax.lax.stop_gradient(logit_scale)
  return local_loss / num_shards, metrics


def classification_loss(logits_BC, labels_B, axis_name=None):
  """Softmax cross-entropy for the classifiers, with the same sharding convention as clip_loss:
  with `axis_name` it returns this device's share (local mean / number of devices), so psums of
  shares and of their gradients are the global values. Metrics: global `loss` and `accuracy`."""
  loss = _cross_entropy(logits_BC, labels_B)
  metrics = {"loss": loss, "accuracy": _accuracy(logits_BC, labels_B)}
  num_shards = 1
  if axis_name is not None:
    metrics = lax.pmean(metrics, axis_name)
    num_shards = lax.axis_size(axis_name)
  return loss / num_shards, jax.lax.stop_gradient(metrics)
