"""Image-text retrieval metrics with several captions per image, computed in bounded memory.

Protocol (as for Flickr/COCO):
  image -> text: an image's rank is the best rank among all of its captions; a hit at k if any
                 of its captions is in the top k.
  text -> image: every caption is a query with exactly one correct image.
Ties are broken deterministically: an item with the same score as the correct one counts as ranked
above it only if its index is smaller. Similarities are computed `chunk_size` queries at a time,
so a gallery of a million items never needs the full N x M matrix in memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jclip.errors import UserError

# The inverse temperature of querybank normalisation's softmax (Bogolin et al. 2022 use 20).
QUERYBANK_BETA = 20.0


@dataclasses.dataclass(frozen=True)
class QuerybankNorm:
  """Querybank normalisation against hubness (QB-Norm with the dynamic inverted softmax, Bogolin et
  al. 2022), for queries of one kind against a gallery of the other.

  A "hub" is a gallery item that is close to many queries, whatever they ask: it crowds the top of
  every ranking. A bank of queries that are not the test queries (training captions for text ->
  image) measures each gallery item's hubness: log_z_G[g] = logsumexp over the bank of beta * s(b,
  g). A test query's scores become beta * s(q, g) - log_z_G[g] (the inverted softmax: each item's
  score relative to how close it is to queries in general), but only when the query's best item
  is one that some bank query ranks first ("active"): elsewhere the plain scores stand.
  """

  log_z_G: np.ndarray  # [G] logsumexp_b beta * s(b, g)
  active_G: np.ndarray  # [G] bool: the best gallery item of some bank query
  beta: float = QUERYBANK_BETA

  @classmethod
  def from_bank(
    cls, bank_emb_BD, gallery_emb_GD, beta: float = QUERYBANK_BETA, chunk_size: int = 1024
  ):
    """The normaliser of a gallery from a bank of queries' embeddings, `chunk_size` at a time."""
    bank_emb_BD = np.asarray(bank_emb_BD, np.float32)
    gallery_emb_GD = np.asarray(gallery_emb_GD, np.float32)
    log_z_G = np.full(len(gallery_emb_GD), -np.inf, np.float64)
    active_G = np.zeros(len(gallery_emb_GD), bool)
    for start in range(0, len(bank_emb_BD), chunk_size):
      scores_BG = beta * (bank_emb_BD[start : start + chunk_size] @ gallery_emb_GD.T)
      log_z_G = np.logaddexp(log_z_G, np.logaddexp.reduce(scores_BG.astype(np.float64), axis=0))
      active_G[np.argmax(scores_BG, axis=1)] = True
    return cls(log_z_G.astype(np.float32), active_G, beta)

  def __call__(self, scores_QG: np.ndarray) -> np.ndarray:
    """The rows of queries whose best item is active, normalised; the other rows as they were."""
    normalised_QG = self.beta * scores_QG - self.log_z_G[None, :]
    active_Q1 = self.active_G[np.argmax(scores_QG, axis=1)][:, None]
    return np.where(active_Q1, normalised_QG, scores_QG)


def _ranks_of_correct(scores_QG: np.ndarray, correct_Q: np.ndarray) -> np.ndarray:
  """0-based rank of gallery item correct_Q[q] in row q of scores, with index tie-breaking."""
  rows = np.arange(len(correct_Q))
  correct_scores_Q1 = scores_QG[rows, correct_Q][:, None]
  higher = np.sum(scores_QG > correct_scores_Q1, axis=1)
  earlier_ties = np.sum(
    (scores_QG == correct_scores_Q1) & (np.arange(scores_QG.shape[1])[None] < correct_Q[:, None]),
    axis=1,
  )
  return higher + earlier_ties


def _plain(scores_QG):
  return scores_QG


def retrieval_ranks(
  image_emb_ND: np.ndarray,
  text_emb_MD: np.ndarray,
  text_to_image_M: np.ndarray,
  chunk_size: int = 1024,
  i2t_norm=_plain,
  t2i_norm=_plain,
) -> tuple[np.ndarray, np.ndarray]:
  """0-based ranks: (image->text [N], text->image [M]).

  Args:
    image_emb_ND: image embeddings (L2-normalised for cosine similarity).
    text_emb_MD: caption embeddings.
    text_to_image_M: the index of each caption's image.
    chunk_size: queries scored at once; memory is O(chunk_size * max(N, M)).
    i2t_norm, t2i_norm: what each direction's cosine scores [queries, gallery] go through before
      they are ranked (a QuerybankNorm); default: nothing.
  """
  image_emb_ND = np.asarray(image_emb_ND, np.float32)
  text_emb_MD = np.asarray(text_emb_MD, np.float32)
  text_to_image_M = np.asarray(text_to_image_M)
  num_images, num_texts = len(image_emb_ND), len(text_emb_MD)
  if text_to_image_M.shape != (num_texts,) or (
    num_texts and not (0 <= text_to_image_M.min() and text_to_image_M.max() < num_images)
  ):
    raise ValueError("text_to_image must hold one image index in [0, N) per caption.")
  if np.bincount(text_to_image_M, minlength=num_images).min(initial=1) == 0:
    raise ValueError("Every image needs at least one caption for image->text retrieval.")
  # A NaN compares false with everything, so every item would rank first: a perfect score.
  for name, emb in (("image", image_emb_ND), ("caption", text_emb_MD)):
    bad = int(np.sum(~np.all(np.isfinite(emb), axis=-1)))
    if bad:
      raise UserError(
        f"{bad} of the {len(emb)} {name} embeddings are not finite (NaN or inf): "
        "the model's weights or its inputs are broken, so there is nothing to rank."
      )

  t2i_ranks_M = np.empty(num_texts, np.int64)
  for start in range(0, num_texts, chunk_size):
    stop = min(start + chunk_size, num_texts)
    scores = t2i_norm(text_emb_MD[start:stop] @ image_emb_ND.T)
    t2i_ranks_M[start:stop] = _ranks_of_correct(scores, text_to_image_M[start:stop])

  # Image -> text: an image's best caption is its highest-scoring one (the earliest on ties), so
  # its rank is that caption's rank; one [chunk, M] score block per chunk of images.
  i2t_ranks_N = np.empty(num_images, np.int64)
  for start in range(0, num_images, chunk_size):
    stop = min(start + chunk_size, num_images)
    scores = i2t_norm(image_emb_ND[start:stop] @ text_emb_MD.T)
    is_own_caption = text_to_image_M[None, :] == np.arange(start, stop)[:, None]
    best_caption = np.argmax(np.where(is_own_caption, scores, -np.inf), axis=1)
    i2t_ranks_N[start:stop] = _ranks_of_correct(scores, best_caption)
  return i2t_ranks_N, t2i_ranks_M


def retrieval_metrics(
  image_emb_ND,
  text_emb_MD,
  text_to_image_M,
  ks=(1, 5, 10),
  chunk_size: int = 1024,
  i2t_norm=_plain,
  t2i_norm=_plain,
) -> dict[str, float]:
  """Recall@k (fractions), mean and median rank (1-based) in both directions (each direction's
  scores normalised as `retrieval_ranks` says).

  Keys: i2t_r1, i2t_r5, i2t_r10, t2i_r1, ..., i2t_mean_rank, i2t_median_rank, t2i_mean_rank, ...,
  and rsum: the sum of the recalls of both directions (with the default ks, the sum of six that
  the retrieval literature reports as one figure, there in percent).
  """
  i2t, t2i = retrieval_ranks(
    image_emb_ND, text_emb_MD, text_to_image_M, chunk_size, i2t_norm, t2i_norm
  )
  metrics = {"rsum": 0.0}
  for name, ranks in (("i2t", i2t), ("t2i", t2i)):
    for k in ks:
      metrics[f"{name}_r{k}"] = float(np.mean(ranks < k))
      metrics["rsum"] += metrics[f"{name}_r{k}"]
    metrics[f"{name}_mean_rank"] = float(np.mean(ranks + 1))
    metrics[f"{name}_median_rank"] = float(np.median(ranks + 1))
  return metrics
