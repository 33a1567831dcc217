"""A locked tower's features, computed once per (image, view) or per caption, and kept on disk.

A locked image backbone (optim.image_backbone_lr_scale = 0, BatchNorm on its running statistics)
maps a given view of a given image to the same features at every step. With a fixed set of views per
image (config.data.cached_views = V), training need not run it at all: every view's pooled features
are computed once, and each step picks one view per image and trains only the projection, the text
tower and the temperature (LiT, Zhai et al. 2022). A locked text tower (text_backbone_lr_scale = 0,
no dropout) likewise maps each caption to fixed pooled features (config.data.cached_text): then a
step trains the two projections and the temperature alone.

    view 0        the evaluation view: shorter side to data.image_size, centre crop
    view v >= 1   a training view (random resized crop and flip, as data.crop_scale_min and
                  data.flip say) drawn from a generator seeded by (image index, v): the same on
                  every run, so the cache can be reused

The file `<cache_dir>/<key>.npy` holds float32 [N, V, F] (images) or [M, F] (every caption of the
split, image by image); `<key>.json` beside it says what the key hashes: the dataset and split
(their fingerprint), the tower's weights (a digest of every array), and the resolution and views,
or the tokenizer and text length. Any change gives another key, so a stale cache is never read; a
file is written to a temporary name and renamed, so a killed run leaves no half-written cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from jclip.batching import DeviceSpread, apply_in_batches
from jclip.data.augment import eval_view, train_view
from jclip.data.tokenizer import PAD_ID
from jclip.pixels import normalize_images
from jclip.tasks import build_image_encoder, build_text_encoder

FORMAT_VERSION = 1


def default_cache_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "jclip", "features")


def weights_digest(tree) -> str:
  """A digest of every array of a tree (names and values): equal weights, equal digest."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = np.ascontiguousarray(np.asarray(leaf, np.float32))
    digest.update(jax.tree_util.keystr(path).encode() + str(array.shape).encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def view_of(image_HW3: np.ndarray, index: int, view: int, data: ml_collections.ConfigDict):
  """View `view` of image `index` (see the module docstring): uint8 [S, S, 3]."""
  if view == 0:
    return eval_view(image_HW3, data.image_size)
  rng = np.random.default_rng([index, view])
  return train_view(image_HW3, data.image_size, rng, data.crop_scale_min, data.flip)


def _key(description: dict) -> str:
  return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def cached_array(description: dict, cache_dir: str | None, compute: Callable[[], np.ndarray]):
  """The array that `description` (a JSON-able dict) names: read from `cache_dir` (default
  ~/.cache/jclip/features), or computed and then written there atomically."""
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, _key(dict(description, format=FORMAT_VERSION)) + ".npy")
  if os.path.exists(path):
    return np.load(path)
  features = compute()
  os.makedirs(cache_dir, exist_ok=True)
  temporary = f"{path}.{os.getpid()}.tmp"
  with open(temporary, "wb") as f:
    np.save(f, features)
  os.replace(temporary, path)
  with open(path[: -len(".npy")] + ".json", "w") as f:
    json.dump(description, f, indent=1)
  return features


def backbone_features(
  source: Sequence[dict],
  num_views: int,
  data: ml_collections.ConfigDict,
  backbone: Callable,
  backbone_digest: str,
  cache_dir: str | None = None,
  batch_size: int = 64,
  desc: str = "features",
) -> np.ndarray:
  """float32 [N, num_views, F]: backbone(normalised images [b, S, S, 3]) -> [b, F] on every view
  of every image of `source` (which needs a `fingerprint`), read from the cache when present."""
  description = dict(
    dataset=source.fingerprint,
    backbone=backbone_digest,
    image_size=data.image_size,
    views=num_views,
    crop_scale_min=data.crop_scale_min if num_views > 1 else None,
    flip=data.flip if num_views > 1 else None,
  )

  def compute():
    views = [(index, view) for index in range(len(source)) for view in range(num_views)]

    def decode(pairs):  # each image once per view: the backbone, not decoding, is the cost
      return normalize_images(
        np.stack([view_of(source[index]["image"], index, view, data) for index, view in pairs])
      )

    features = apply_in_batches(backbone, views, batch_size, prepare=decode, desc=desc)
    return features.reshape(len(source), num_views, -1)

  return cached_array(description, cache_dir, compute)


def caption_features(
  source: Sequence[dict],
  tokenize: Callable,
  tokenizer_digest: str,
  text_backbone: Callable,
  backbone_digest: str,
  cache_dir: str | None = None,
  batch_size: int = 256,
  desc: str = "features",
) -> np.ndarray:
  """float32 [M, F]: text_backbone(tokens [b, L]) -> [b, F] on every caption of `source`, image by
  image in caption order (source.captions(i)), read from the cache when present."""
  description = dict(
    dataset=source.fingerprint, text_backbone=backbone_digest, tokenizer=tokenizer_digest
  )

  def compute():
    captions = [c for index in range(len(source)) for c in source.captions(index)]
    tokens_ML = np.asarray(tokenize(captions))
    # Captions sorted by length, each batch cut to its longest (rounded up to 8: a few shapes to
    # compile): padding is masked out of attention and pooling, so it changes nothing but the cost.
    lengths_M = np.maximum((tokens_ML != PAD_ID).sum(axis=1), 1)
    order_M = np.argsort(lengths_M, kind="stable")

    def cut(rows_B):
      width = min(tokens_ML.shape[1], -(-max(lengths_M[rows_B]) // 8) * 8)
      return tokens_ML[rows_B, :width]

    features_MF = apply_in_batches(text_backbone, order_M, batch_size, prepare=cut, desc=desc)
    unsorted_MF = np.empty_like(features_MF)
    unsorted_MF[order_M] = features_MF
    return unsorted_MF

  return cached_array(description, cache_dir, compute)


def _on_local_devices(apply: Callable, weights: dict) -> Callable:
  """apply(weights, batch) as a function of the batch, run on every local device (weights copied
  to each once)."""
  spread = DeviceSpread()
  return functools.partial(spread.jit(apply), spread.copy_to_devices(weights))


def locked_backbone(config: ml_collections.ConfigDict, variables: dict):
  """(jitted backbone: normalised images [b, S, S, 3] -> features [b, F], digest of its weights)
  for the image backbone of a CLIP's `variables` (model.image.tower 'efficientnet_lite'); each
  batch runs on every local device."""
  tower = build_image_encoder(config, None)
  weights = {
    collection: variables[collection]["image_encoder"]["backbone"]
    for collection in ("params", "batch_stats")
  }
  return _on_local_devices(tower.backbone.apply, weights), weights_digest(weights)


def locked_text_tower(config: ml_collections.ConfigDict, variables: dict):
  """(jitted text tower without its projection: tokens [b, L] -> pooled features [b, F], digest of
  its weights) for the text tower of a CLIP's `variables`; each batch runs on every local
  device."""
  tower = build_text_encoder(config, None)
  weights = {
    "params": {
      name: value for name, value in variables["params"]["text_encoder"].items() if name != "proj"
    }
  }
  return _on_local_devices(tower.apply, weights), weights_digest(weights)


def split_features(
  config: ml_collections.ConfigDict, source: Sequence[dict], variables: dict, num_views: int
) -> np.ndarray:
  """float32 [N, num_views, F]: the locked backbone of `variables` on a split (cached as above,
  in config.data.feature_cache_dir or the default)."""
  backbone, digest = locked_backbone(config, variables)
  return backbone_features(
    source,
    num_views,
    config.data,
    backbone,
    digest,
    config.data.feature_cache_dir,
    desc=f"image features ({getattr(source, 'split', '')})",
  )


def split_caption_features(
  config: ml_collections.ConfigDict, source: Sequence[dict], variables: dict, tokenizer
) -> np.ndarray:
  """float32 [M, F]: the locked text tower of `variables` on every caption of a split."""
  text_backbone, digest = locked_text_tower(config, variables)
  max_len = config.data.max_text_len
  tokenizer_digest = hashlib.sha256(tokenizer.to_bytes() + str(max_len).encode()).hexdigest()
  return caption_features(
    source,
    lambda texts: tokenizer.encode(texts, max_len),
    tokenizer_digest,
    text_backbone,
    digest,
    config.data.feature_cache_dir,
    desc=f"caption features ({getattr(source, 'split', '')})",
  )
