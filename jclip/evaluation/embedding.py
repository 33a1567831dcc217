"""Embedding images and captions with a CLIP's towers, in fixed-shape batches.

`Embedder` holds the jitted encoders of one model and takes the variables as an argument, so the
evaluators in the training loop embed with the weights of the step at hand and compile once.
`TrainedModel` is an Embedder with the variables of a restored checkpoint (eval.py, the suite).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from jclip.data.pipeline import eval_image_batches
from jclip.data.tokenizer import Tokenizer
from jclip.errors import UserError
from jclip.models.clip import CLIP
from jclip.pixels import normalize_images
from jclip.runs.restore import RestoredModel, restore_model


def apply_in_batches(fn: Callable, inputs_N: np.ndarray, batch_size: int) -> np.ndarray:
  """fn(inputs [batch_size, ...]) -> [batch_size, ...] over the rows of inputs_N, concatenated in
  order; the last batch is padded by repeating its final row, so a jitted fn compiles once."""
  if not len(inputs_N):
    raise UserError("Nothing to embed: the input is empty.")
  chunks = []
  for start in range(0, len(inputs_N), batch_size):
    batch = inputs_N[start:start + batch_size]
    valid = len(batch)
    if valid < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - valid, axis=0)])
    chunks.append(np.asarray(fn(batch))[:valid])
  return np.concatenate(chunks)


def apply_to_images(fn: Callable, source: Sequence[dict], batch_size: int,
                    image_size: int) -> np.ndarray:
  """fn(normalised images [b, S, S, 3]) -> [b, ...] over a source's images, in order, decoding one
  batch at a time (a gallery need not fit in memory); padded batches as above."""
  return np.concatenate([np.asarray(fn(images))[:valid] for images, valid in
                         eval_image_batches(source, batch_size, image_size)])


def apply_to_texts(fn: Callable, texts: Sequence[str], tokenizer: Tokenizer, max_len: int,
                   batch_size: int) -> np.ndarray:
  """fn(tokens [b, L]) -> [b, ...] over texts, in order; padded batches as above."""
  return apply_in_batches(fn, tokenizer.encode(list(texts), max_len), batch_size)


class Embedder:
  """Unit-norm image and text embeddings [N, D] of one CLIP, for any of its variables.

  Args:
    model: the CLIP module; tokenizer: its tokenizer; config: the run's config (data.image_size and
      data.max_text_len give the input shapes).
  """

  def __init__(self, model: CLIP, tokenizer: Tokenizer, config: ml_collections.ConfigDict):
    self.model, self.tokenizer = model, tokenizer
    self.image_size, self.max_text_len = config.data.image_size, config.data.max_text_len
    self._encode_image = jax.jit(lambda v, x: model.apply(v, x, method=CLIP.encode_image))
    self._encode_text = jax.jit(lambda v, t: model.apply(v, t, method=CLIP.encode_text))

  def image_arrays(self, variables, images_uint8_NHWC: np.ndarray,
                   batch_size: int = 256) -> np.ndarray:
    """Images already at the model's size (uint8 [N, S, S, 3])."""
    return apply_in_batches(lambda x: self._encode_image(variables, normalize_images(x)),
                            images_uint8_NHWC, batch_size)

  def features(self, variables, features_NC: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """An image backbone's pooled features [N, C] (its cached output): only the projection runs."""
    return apply_in_batches(lambda f: self._encode_image(variables, f), features_NC, batch_size)

  def source_images(self, variables, source: Sequence[dict], batch_size: int = 256) -> np.ndarray:
    """The images of a source, each resized and centre-cropped to the model's size."""
    return apply_to_images(lambda x: self._encode_image(variables, x), source, batch_size,
                           self.image_size)

  def tokens(self, variables, tokens_NL: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Texts already tokenized to int32 [N, data.max_text_len]."""
    return apply_in_batches(lambda t: self._encode_text(variables, t), tokens_NL, batch_size)

  def texts(self, variables, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    return self.tokens(variables, self.tokenizer.encode(list(texts), self.max_text_len),
                       batch_size)

  def logit_scale(self, variables) -> float:
    return float(self.model.apply(variables, method=CLIP.logit_scale))


@dataclasses.dataclass
class TrainedModel:
  """A restored CLIP with everything needed to embed: weights, config and tokenizer."""

  model: CLIP
  variables: dict
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  step: int

  def __post_init__(self):
    self._embedder = Embedder(self.model, self.tokenizer, self.config)

  @classmethod
  def from_restored(cls, restored: RestoredModel) -> "TrainedModel":
    if restored.config.get("task", "clip") != "clip":
      raise UserError(f"The checkpoint holds a {restored.config.task}, not a CLIP model: it "
                       "embeds no image-text pairs.")
    return cls(restored.model, restored.variables, restored.config, restored.tokenizer,
               restored.step)

  @property
  def logit_scale(self) -> float:
    return self._embedder.logit_scale(self.variables)

  def embed_images(self, source: Sequence[dict], batch_size: int = 256) -> np.ndarray:
    """Unit-norm embeddings [len(source), D] of the images of a source, in order."""
    return self._embedder.source_images(self.variables, source, batch_size)

  def embed_image_arrays(self, images_uint8_NHWC: np.ndarray) -> np.ndarray:
    return self._embedder.image_arrays(self.variables, images_uint8_NHWC)

  def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unit-norm embeddings [len(texts), D] of texts, in order."""
    return self._embedder.texts(self.variables, texts, batch_size)


def load_trained_model(workdir: str, which: str | int | None = None) -> TrainedModel:
  """Restores a CLIP checkpoint with its own config and tokenizer (`which`: see restore_model)."""
  return TrainedModel.from_restored(restore_model(workdir, which))


def split_captions(source: Sequence[dict]) -> tuple[list[str], np.ndarray]:
  """Every caption of a source in order [M], and the index of each caption's image [M]."""
  captions, text_to_image = [], []
  for index in range(len(source)):
    for caption in source.captions(index):
      captions.append(caption)
      text_to_image.append(index)
  return captions, np.asarray(text_to_image)


def embed_split(trained: TrainedModel, source: Sequence[dict], batch_size: int = 256):
  """Embeds every image and every caption of a source.

  Returns (image_emb [N, D], text_emb [M, D], text_to_image [M], captions [M]).
  """
  captions, text_to_image = split_captions(source)
  return (trained.embed_images(source, batch_size), trained.embed_texts(captions, batch_size),
          text_to_image, captions)
