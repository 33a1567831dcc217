"""Contrastive losses, written against an optional named device axis.

`clip_loss` is the symmetric InfoNCE of CLIP (Radford et al. 2021). Without `axis_name` it scores a
batch of B pairs against itself. With `axis_name` (inside `jax.pmap` or `jax.shard_map`) every
device holds B local pairs of a global batch of N = B * P pairs; it gathers the embeddings of all
P devices, scores its own B rows against all N columns, and finds its matching column at
`axis_index * B + i`.

Convention for the sharded value: each device returns its *share* of the global loss (its local mean
divided by P), so that

    global loss      = psum(share) over the axis,
    global gradients = psum(grad of share) over the axis,

exactly as on one device with the concatenated batch. The gather's backward pass (a reduce-scatter)
sends every device the gradient that the other devices' rows put on its embeddings, which is why the
shares' gradients already account for the whole global batch. docs/contrastive_loss.md works this
through with numbers.

`siglip_loss` is the sigmoid loss of SigLIP (Zhai et al. 2023): every image-text pair is scored on
its own, so no row or column needs the whole batch at once. Sharded, it gathers nothing: the images
stay put while the text blocks travel round the devices in a ring (`lax.ppermute`), and each device
scores one [B, B] block at a time. It follows the same share convention.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# The values of config.loss: the loss a CLIP model trains with (jclip/tasks.py picks it).
LOSSES = ("clip", "siglip")


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
    raise ValueError(
      f"{num_texts} captions for {local_batch} images: every image needs the same "
      "number of captions, image by image."
    )
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
  right_captions_BK = (
    image_index_B[:, None] * captions_per_image + jnp.arange(captions_per_image)[None, :]
  )
  caption_image_M = offset + jnp.arange(num_texts) // captions_per_image

  local_loss = 0.5 * (
    _cross_entropy(logits_i2t_BX, right_captions_BK)
    + _cross_entropy(logits_t2i_MN, caption_image_M)
  )
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


def siglip_loss(image_emb_BD, text_emb_BD, logit_scale, logit_bias, axis_name=None):
  """The sigmoid loss of SigLIP over the (global) batch: one binary classification per pair.

    loss = -1/N * sum_i sum_j log sigmoid(z_ij * (logit_scale * <image_i, text_j> + logit_bias))

  with z_ij = +1 for image i's own text and -1 for the N - 1 others: the mean over the images of
  each image's summed pair losses, as in the paper. No softmax normalises over the batch; the bias
  (initialised at -10 in the paper) lets the model start from "most pairs do not match".

  Args:
    image_emb_BD: L2-normalised image embeddings of this device's B images.
    text_emb_BD: L2-normalised text embeddings of their B captions (row i describes image i).
    logit_scale: the multiplier exp(t), already clamped (a scalar).
    logit_bias: the learnable bias b (a scalar).
    axis_name: the pmap/shard_map axis of the ring, or None for a single device.

  Sharded over P devices, the images stay on their device and the texts travel: P - 1 times each
  device passes the text block it holds to its neighbour (`lax.ppermute`, device p to p + 1) and
  scores its B images against it, so it sees all N texts, one [B, B] block at a time, and never
  holds a [B, N] strip. The positives lie on the diagonal of the first block (its own texts); the
  other blocks are all negatives. The gradient of a visiting block goes back round the ring
  (ppermute's transpose is the reverse permutation) to the device that owns those texts.

  Returns:
    (loss, metrics), with clip_loss's convention: `loss` is the batch loss on one device, or this
    device's share of the global loss with `axis_name` (its images' mean / P); `metrics` are global,
    identical on every device and not differentiated: `loss`, `i2t_accuracy` and `t2i_accuracy`
    (how often an item's own pair scores strictly above every other pair of its row or column:
    ties count as misses), `logit_scale` and `logit_bias`.
  """
  local_batch = image_emb_BD.shape[0]
  if text_emb_BD.shape[0] != local_batch:
    raise ValueError(
      f"{text_emb_BD.shape[0]} captions for {local_batch} images: the sigmoid loss "
      "takes one caption per image."
    )
  image_emb_BD = image_emb_BD.astype(jnp.float32)
  num_shards = 1 if axis_name is None else lax.axis_size(axis_name)

  def logits_of(text_emb_BD):  # this device's images against one block of texts
    return logit_scale * image_emb_BD @ text_emb_BD.astype(jnp.float32).T + logit_bias

  # The own block: the positives on its diagonal, its other entries negatives.
  own_logits_BB = logits_of(text_emb_BD)
  diagonal_BB = jnp.eye(local_batch, dtype=bool)
  pair_loss_sum = -jnp.sum(
    jax.nn.log_sigmoid(jnp.where(diagonal_BB, own_logits_BB, -own_logits_BB))
  )
  # For the accuracies: each pair's logit against the best negative of its row (image) and of its
  # column (text). A text's column spans every device, so its pair's logit and its best negative
  # so far travel round the ring with it.
  seen_BB = lax.stop_gradient(own_logits_BB)
  positive_B = jnp.diagonal(seen_BB)
  negatives_BB = jnp.where(diagonal_BB, -jnp.inf, seen_BB)
  image_best_B = negatives_BB.max(axis=1)
  column_B = (positive_B, negatives_BB.max(axis=0))

  if num_shards > 1:
    ring = [(p, (p + 1) % num_shards) for p in range(num_shards)]

    # Rematerialised: the backward pass recomputes a block's logits from the text block it
    # received, so the scan keeps the P - 1 visiting [B, D] blocks, not P - 1 [B, B] blocks of
    # logits; the ppermute stays outside, so the texts are not sent round a second time.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def negatives_of(text_emb_BD):
      logits_BB = logits_of(text_emb_BD)
      return -jnp.sum(jax.nn.log_sigmoid(-logits_BB)), lax.stop_gradient(logits_BB)

    def hop(carry, _):
      text_emb_BD, pair_loss_sum, image_best_B, column_B = carry
      text_emb_BD, (text_positive_B, text_best_B) = lax.ppermute(
        (text_emb_BD, column_B), axis_name, ring
      )
      block_loss, seen_BB = negatives_of(text_emb_BD)
      column_B = (text_positive_B, jnp.maximum(text_best_B, seen_BB.max(axis=0)))
      return (
        text_emb_BD,
        pair_loss_sum + block_loss,
        jnp.maximum(image_best_B, seen_BB.max(axis=1)),
        column_B,
      ), None

    (_, pair_loss_sum, image_best_B, column_B), _ = lax.scan(
      hop, (text_emb_BD, pair_loss_sum, image_best_B, column_B), None, length=num_shards - 1
    )

  local_loss = pair_loss_sum / local_batch
  metrics = {
    "loss": local_loss,
    "i2t_accuracy": jnp.mean((positive_B > image_best_B).astype(jnp.float32)),
    # After P - 1 hops each device holds another device's texts, each text's column complete.
    "t2i_accuracy": jnp.mean((column_B[0] > column_B[1]).astype(jnp.float32)),
  }
  if axis_name is not None:
    metrics = lax.pmean(metrics, axis_name)
  metrics = jax.lax.stop_gradient(metrics)
  metrics["logit_scale"] = jax.lax.stop_gradient(logit_scale)
  metrics["logit_bias"] = jax.lax.stop_gradient(logit_bias)
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
