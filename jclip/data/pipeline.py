"""The input pipeline: a source of captioned images -> batches shaped for the pmap'd train step.

    source[i]                      {"image": uint8 [H, W, 3], "captions": [str, ...]}, or
                                   with "image_features" float32 [V, F] for "image" (V views)
                                   and/or "text_features" [K, F'] for "captions": locked towers'
                                   cached features (sources.CachedFeatureSource)
    .seed(seed).shuffle().repeat() a new deterministic order every epoch
    .random_map(training_example)  one caption (or K different ones) per image per epoch and a
                                   random view of the image, all from a per-element rng
    [process_index::process_count] each host reads only its own share of every global batch
    .batch(per_host_batch)
    .map(to_model_inputs)          normalise images, tokenize, reshape to [devices, per_device, ...]
    [start_step:]                  resuming at step s starts at the batch of step s

Every element is a function of (seed, position in the stream): batch s is the same whether the run
started at step 0 or resumed at step s, which is what makes a resumed run replay an
uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import grain
import numpy as np

from jclip.data.augment import train_view
from jclip.errors import UserError
from jclip.pixels import normalize_images

# Each field of a source's example -> the field of the batch that it becomes.
IMAGE_FIELDS = {"image": "image", "image_features": "image_features"}
CAPTION_FIELDS = {"captions": "tokens", "text_features": "text_features"}


def _one_of(example: dict, fields: dict) -> str:
  """The name of the one field of `fields` that `example` holds (an input, or its features)."""
  (name,) = [name for name in fields if name in example]
  return name


def _training_example(
  example: dict,
  rng: np.random.Generator,
  *,
  image_size: int,
  crop_scale_min: float,
  flip: bool,
  captions_per_image: int,
) -> dict:
  image_field, caption_field = _one_of(example, IMAGE_FIELDS), _one_of(example, CAPTION_FIELDS)
  if image_field == "image_features":  # cached features of V views [V, F]: one view
    image = example["image_features"][rng.integers(len(example["image_features"]))]
  else:
    image = train_view(example["image"], image_size, rng, crop_scale_min, flip)
  # The caption texts or their cached features [K, F']: one of them, or several different ones
  # (repeats only if the image has fewer captions than asked for).
  captions = example[caption_field]
  if captions_per_image == 1:  # the draw of earlier versions: their runs resume on the same stream
    chosen = [captions[rng.integers(len(captions))]]
  else:
    picks = rng.choice(
      len(captions), captions_per_image, replace=len(captions) < captions_per_image
    )
    chosen = [captions[i] for i in picks]
  return {image_field: image, caption_field: chosen, "label": example.get("label", -1)}


def train_batches(
  source: Sequence[dict],
  tokenize: Callable[[Sequence[str]], np.ndarray],
  *,
  image_size: int,
  global_batch_size: int,
  num_local_devices: int,
  seed: int,
  crop_scale_min: float = 1.0,
  flip: bool = False,
  captions_per_image: int = 1,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int = 2,
  prefetch: int = 4,
) -> grain.IterDataset:
  """An endless iterator of train batches starting at `start_step`.

  Each batch is {"image": float32 [devices, per_device, S, S, 3], "tokens": int32 [devices,
  per_device * K, L], "label": int32 [devices, per_device] (-1 where the source has no labels)} for
  this process's local devices, with K = captions_per_image different captions of each image,
  image by image (the layout jclip.losses.clip_loss expects). `tokenize` maps a list of captions to
  int32 [N, L]. Images become random crops covering [crop_scale_min, 1] of their area, resized
  to S = image_size, mirrored half of the time if `flip` (see jclip.data.augment). From cached
  features, "image_features" float32 [devices, per_device, F] (one of each image's V views) stands
  for "image", and "text_features" float32 [devices, per_device * K, F'] for "tokens".
  """
  per_host, remainder = divmod(global_batch_size, process_count)
  if remainder or per_host % num_local_devices:
    raise UserError(
      f"batch_size={global_batch_size} must split evenly over {process_count} "
      f"host(s) x {num_local_devices} local device(s); pick a multiple of "
      f"{process_count * num_local_devices}."
    )
  per_device = per_host // num_local_devices

  def to_model_inputs(examples: Sequence[dict]) -> dict:
    image_field = _one_of(examples[0], IMAGE_FIELDS)
    caption_field = _one_of(examples[0], CAPTION_FIELDS)
    images = np.stack([e[image_field] for e in examples])
    captions = [caption for e in examples for caption in e[caption_field]]
    if image_field == "image":
      images = normalize_images(images)
    tokens = tokenize(captions) if caption_field == "captions" else np.stack(captions)
    labels = np.array([e["label"] for e in examples], np.int32)
    return {
      IMAGE_FIELDS[image_field]: images.reshape(num_local_devices, per_device, *images.shape[1:]),
      CAPTION_FIELDS[caption_field]: tokens.reshape(num_local_devices, -1, tokens.shape[-1]),
      "label": labels.reshape(num_local_devices, per_device),
    }

  training_example = functools.partial(
    _training_example,
    image_size=image_size,
    crop_scale_min=crop_scale_min,
    flip=flip,
    captions_per_image=captions_per_image,
  )
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat().random_map(training_example)
  ds = ds[process_index::process_count]
  ds = ds.batch(per_host, drop_remainder=True, batch_fn=list).map(to_model_inputs)
  return ds[start_step:].to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  )
