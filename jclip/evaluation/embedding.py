"""A model's outputs on a split, the one path that the training loop's evaluators and eval.py share.

  Predictor      the jitted functions of one model (embeddings, logits, the logit scale) that take
                 the variables as an argument: the evaluators of the loop score the weights of the
                 step at hand and compile once; each batch runs on every local device
  EvalSplit      one split as evaluation reads it: its captions tokenized and its classes read once,
                 its eval views decoded once (kept in memory in the loop, streamed by eval.py),
                 locked towers' features read from the feature cache; and its embeddings under one
                 step's weights (images and captions, each only when asked for), computed once
                 whichever evaluators ask for them, and kept on disk for eval.py's next query
  EmbeddedSplit  those embeddings with what they index: captions, images, classes

Which inputs a CLIP reads (images or a locked backbone's cached features, tokens or a locked text
tower's) is jclip.tasks.model_inputs's choice, the same as in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np
from flax import linen as nn

from jclip.batching import DeviceSpread, apply_in_batches
from jclip.config.defaults import to_json_dict
from jclip.data.augment import eval_view
from jclip.data.sources import class_names_of, labels_of
from jclip.data.tokenizer import Tokenizer
from jclip.errors import UserError
from jclip.models.clip import CLIP
from jclip.pixels import normalize_images
from jclip.runs.feature_cache import (
  cached_array,
  split_caption_features,
  split_features,
  weights_digest,
)
from jclip.tasks import model_inputs


class Predictor:
  """The jitted functions of one model for any of its variables. A CLIP gives unit embeddings
  [N, D] of images, cached image features, tokens, cached text features or texts; a classifier
  gives logits [N, C] of its input. Each batch's rows are split over `devices` (default: every
  local device; jclip.batching.DeviceSpread), and the figures are those of one device."""

  def __init__(
    self,
    model: nn.Module,
    tokenizer: Tokenizer,
    config: ml_collections.ConfigDict,
    devices: Sequence | None = None,
  ):
    self.model, self.tokenizer, self.config = model, tokenizer, config
    self.inputs = model_inputs(config)
    self._spread = DeviceSpread(devices)
    jit = self._spread.jit
    method = lambda name: jit(lambda v, x: model.apply(v, x, method=getattr(CLIP, name)))
    if isinstance(model, CLIP):
      self._image, self._text = method("encode_image"), method("encode_text")
      self._image_features = jit(
        lambda v, f: model.apply(v, image_features_BF=f, method=CLIP.encode_image)
      )
      self._text_features = jit(
        lambda v, f: model.apply(v, text_features_BF=f, method=CLIP.encode_text)
      )
    field = "tokens" if config.task == "text_classifier" else "image"
    self._logits = jit(lambda v, x: model.apply(v, **{field: x}))

  def on_devices(self, variables):
    """`variables` copied to every device once, for the calls that follow: host arrays would be
    copied again at every batch."""
    return self._spread.copy_to_devices(variables)

  def image_batch(self, variables, images_BSS3) -> np.ndarray:
    """One batch of normalised images at the model's size [B, S, S, 3]. Another size is refused:
    a CNN would embed it (its pooling takes any size) into a vector that means little."""
    size = self.config.data.image_size
    if tuple(images_BSS3.shape[1:]) != (size, size, 3):
      raise UserError(
        f"Images of shape {tuple(images_BSS3.shape[1:])}: this model takes [B, {size}, {size}, "
        "3]. jclip.Model.encode_images resizes any image the model's way "
        "(jclip.data.images.resize_and_center_crop)."
      )
    return self._image(variables, images_BSS3)

  def image_features(self, variables, features_NF: np.ndarray, batch_size: int = 256):
    """A locked image backbone's pooled features [N, F] (its cached output): only the projection
    runs."""
    return apply_in_batches(lambda f: self._image_features(variables, f), features_NF, batch_size)

  def tokens(self, variables, tokens_NL: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Texts already tokenized to int32 [N, data.max_text_len]."""
    return apply_in_batches(lambda t: self._text(variables, t), tokens_NL, batch_size)

  def text_features(self, variables, features_MF: np.ndarray, batch_size: int = 256):
    """A locked text tower's pooled features [M, F]: only the projection runs."""
    return apply_in_batches(lambda f: self._text_features(variables, f), features_MF, batch_size)

  def texts(self, variables, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    return self.tokens(
      variables, self.tokenizer.encode(list(texts), self.config.data.max_text_len), batch_size
    )

  def logits_batch(self, variables, inputs_B) -> np.ndarray:
    """A classifier's logits [B, C] of one batch of its input (normalised images, or tokens)."""
    return self._logits(variables, inputs_B)

  def logit_scale(self, variables) -> float:
    return float(self.model.apply(variables, method=CLIP.logit_scale))


def split_captions(source: Sequence[dict]) -> tuple[list[str], np.ndarray]:
  """Every caption of a source in order [M], and the index of each caption's image [M]."""
  captions, text_to_image = [], []
  for index in range(len(source)):
    for caption in source.captions(index):
      captions.append(caption)
      text_to_image.append(index)
  return captions, np.asarray(text_to_image)


@dataclasses.dataclass(frozen=True)
class EmbeddedSplit:
  """A split's embeddings under one step's weights, and what their rows are."""

  split: str
  image_emb_ND: np.ndarray  # unit rows, one per image
  text_emb_MD: np.ndarray  # unit rows, one per caption, image by image
  text_to_image_M: np.ndarray  # the image of each caption
  captions: list[str]  # [M]
  class_names: list[str] | None  # None: the split has no classes
  labels_N: np.ndarray | None  # the class of each image

  @property
  def first_caption_N(self) -> np.ndarray:
    """The index of each image's first caption [N] (the captions are listed image by image)."""
    return np.unique(self.text_to_image_M, return_index=True)[1]

  @property
  def caption_labels_M(self) -> np.ndarray | None:
    """The class of each caption: its image's."""
    return None if self.labels_N is None else self.labels_N[self.text_to_image_M]


class EvalSplit:
  """One split of a run's data as evaluation reads it (see the module docstring).

  Args:
    source: the split (random access, with `captions(i)` and `split`).
    config: the run's config (data.image_size, max_text_len; which inputs the model reads).
    tokenizer: the run's tokenizer.
    keep_views: decode every image once and keep the uint8 views (the loop evaluates a split many
      times); False decodes them batch by batch at each embedding (eval.py: a gallery need not fit
      in memory).
    store_dir: a folder where the split's embeddings under given weights are kept (eval.py:
      <workdir>/eval/embeddings), so that a second query of the same checkpoint reads them instead
      of running the model; None keeps them in memory only (the training loop).
  """

  def __init__(
    self,
    source,
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    keep_views: bool = True,
    store_dir: str | None = None,
  ):
    self.source, self.name, self._config = source, source.split, config
    self.captions, self.text_to_image_M = split_captions(source)
    self.tokens_ML = tokenizer.encode(self.captions, config.data.max_text_len)
    self.class_names, self.labels_N = class_names_of(source), labels_of(source)
    self._views_NHW3 = self._decode(range(len(source))) if keep_views else None
    self._image_features_NF = self._text_features_MF = None  # locked towers', on first use
    self._store_dir = store_dir if getattr(source, "fingerprint", None) else None
    # The variables last embedded, their embeddings by part, and their digest (for store_dir).
    self._embedded_with, self._parts, self._digest = None, {}, None

  def _decode(self, indices) -> np.ndarray:
    size = self._config.data.image_size
    return np.stack([eval_view(self.source[i]["image"], size) for i in indices])

  def apply_to_images(self, fn, batch_size: int) -> np.ndarray:
    """fn(normalised images [b, S, S, 3]) -> [b, ...] over every image of the split, in order."""
    if self._views_NHW3 is not None:
      return apply_in_batches(fn, self._views_NHW3, batch_size, prepare=normalize_images)
    return apply_in_batches(
      fn,
      range(len(self.source)),
      batch_size,
      prepare=lambda indices: normalize_images(self._decode(indices)),
      desc=f"{self.name} images",
    )

  def _part(self, part: str, variables, compute) -> np.ndarray:
    """The embeddings `part` ("images" or "captions") under `variables`: computed once for the
    same variables, and with a store_dir read back when an earlier run computed them."""
    if variables is not self._embedded_with:
      self._embedded_with, self._parts, self._digest = variables, {}, None
    if part not in self._parts:
      if self._store_dir is None:
        self._parts[part] = compute()
      else:
        self._digest = self._digest or weights_digest(variables)
        description = {
          "split": self.source.fingerprint,
          "part": part,
          "weights": self._digest,
          "config": to_json_dict(self._config),
        }
        self._parts[part] = cached_array(description, self._store_dir, compute)
    return self._parts[part]

  def image_embeddings(self, predictor: Predictor, variables, batch_size: int = 256):
    """Unit embeddings [N, D] of every image of the split."""

    def compute():
      if "image_features" not in predictor.inputs:
        return self.apply_to_images(lambda x: predictor.image_batch(variables, x), batch_size)
      if self._image_features_NF is None:  # a locked backbone: its features never change
        features_NVF = split_features(self._config, self.source, variables, num_views=1)
        self._image_features_NF = features_NVF[:, 0]
      return predictor.image_features(variables, self._image_features_NF, batch_size)

    return self._part("images", variables, compute)

  def text_embeddings(self, predictor: Predictor, variables, batch_size: int = 256):
    """Unit embeddings [M, D] of every caption of the split, image by image."""

    def compute():
      if not self.captions:  # a bank of labelled images without captions
        return np.zeros((0, self._config.model.embed_dim), np.float32)
      if "text_features" not in predictor.inputs:
        return predictor.tokens(variables, self.tokens_ML, batch_size)
      if self._text_features_MF is None:
        self._text_features_MF = split_caption_features(
          self._config, self.source, variables, predictor.tokenizer
        )
      return predictor.text_features(variables, self._text_features_MF, batch_size)

    return self._part("captions", variables, compute)

  def embed(self, predictor: Predictor, variables, batch_size: int = 256) -> EmbeddedSplit:
    """Every image and caption embedded with `variables`; the same variables again (retrieval and
    zero-shot at one step) return the same embeddings without running the model."""
    return EmbeddedSplit(
      self.name,
      self.image_embeddings(predictor, variables, batch_size),
      self.text_embeddings(predictor, variables, batch_size),
      self.text_to_image_M,
      self.captions,
      self.class_names,
      self.labels_N,
    )
