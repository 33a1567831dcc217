"""How well a model separates N matched image-caption pairs, as one matrix and two numbers.

    sim_NN[i, j] = cos(caption i, image j)        rows: captions, columns: images

Caption i describes image i, so a good model puts high values on the diagonal and low ones off it.

  separation_score = mean(diagonal) - mean(off-diagonal)
                     0 for a model that cannot tell pairs apart; 1 when every caption equals its
                     image and is orthogonal to the other images;
                     it compares a caption's match with the other images, so a model that makes
                     every similarity high scores no better than one that makes them all low.
  trace            = sum of the diagonal, the total similarity of the matched pairs (N at most).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from jclip.models.clip import l2_normalize  # noqa: E402


def similarity_matrix(image_emb_ND: np.ndarray, text_emb_ND: np.ndarray) -> np.ndarray:
  """Cosine similarities [N, N]: row i is caption i, column j is image j."""
  image_emb_ND = np.asarray(image_emb_ND, np.float32)
  text_emb_ND = np.asarray(text_emb_ND, np.float32)
  if image_emb_ND.ndim != 2 or image_emb_ND.shape != text_emb_ND.shape:
    raise ValueError(
      f"image_emb {image_emb_ND.shape} and text_emb {text_emb_ND.shape} must both "
      "be [N, D]: one caption per image, in the same order."
    )
  return np.asarray(l2_normalize(text_emb_ND) @ l2_normalize(image_emb_ND).T)


def _check_square(sim_NN: np.ndarray) -> np.ndarray:
  sim_NN = np.asarray(sim_NN, np.float64)
  if sim_NN.ndim != 2 or sim_NN.shape[0] != sim_NN.shape[1] or sim_NN.shape[0] < 2:
    raise ValueError(
      f"sim has shape {sim_NN.shape}; it must be square [N, N] with N >= 2 pairs "
      "(one pair has no off-diagonal to compare with)."
    )
  return sim_NN


def _matched_and_unmatched_means(sim_NN: np.ndarray) -> tuple[float, float]:
  sim_NN = _check_square(sim_NN)
  n = len(sim_NN)
  trace = np.trace(sim_NN)
  return float(trace / n), float((sim_NN.sum() - trace) / (n * n - n))


def separation_score(sim_NN: np.ndarray) -> float:
  """Mean of the diagonal (matched pairs) minus mean of the off-diagonal (mismatched pairs)."""
  matched_mean, unmatched_mean = _matched_and_unmatched_means(sim_NN)
  return matched_mean - unmatched_mean


def similarity_summary(sim_NN: np.ndarray) -> dict[str, float]:
  """A JSON-able dict: num_pairs, separation_score, trace, matched_mean, unmatched_mean."""
  matched_mean, unmatched_mean = _matched_and_unmatched_means(sim_NN)
  return {
    "num_pairs": len(sim_NN),
    "separation_score": matched_mean - unmatched_mean,
    "trace": float(np.trace(sim_NN)),
    "matched_mean": matched_mean,
    "unmatched_mean": unmatched_mean,
  }


def save_similarity_heatmap(
  sim_NN: np.ndarray, captions: Sequence[str], path: str, image_labels: Sequence[str] | None = None
) -> None:
  """Writes the matrix as a heatmap: captions (wrapped, truncated) label the rows, images the
  columns (default "image 0", ...); the title gives the separation score and the trace."""
  sim_NN = _check_square(sim_NN)
  n = len(sim_NN)
  image_labels = [f"image {j}" for j in range(n)] if image_labels is None else image_labels
  if len(captions) != n or len(image_labels) != n:
    raise ValueError(
      f"sim is [{n}, {n}] but there are {len(captions)} captions and "
      f"{len(image_labels)} image labels; give one of each per pair."
    )
  row_labels = [textwrap.shorten(c, 70, placeholder="...") for c in captions]
  row_labels = ["\n".join(textwrap.wrap(label, 35)) for label in row_labels]
  fig, ax = plt.subplots(figsize=(4.5 + 0.5 * n, 1.5 + 0.55 * n))
  image = ax.imshow(sim_NN, cmap="viridis", vmin=min(0.0, sim_NN.min()), vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
  ax.set_xticks(range(n), image_labels, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(n), row_labels, fontsize=7)
  ax.set_xlabel("image")
  ax.set_ylabel("caption")
  if n <= 16:  # beyond that the numbers no longer fit in the cells
    for row in range(n):
      for col in range(n):
        ax.text(
          col,
          row,
          f"{sim_NN[row, col]:.2f}",
          ha="center",
          va="center",
          fontsize=7,
          color="black" if sim_NN[row, col] > 0.6 else "white",
        )
  ax.set_title(
    f"separation {separation_score(sim_NN):.3f}   trace {np.trace(sim_NN):.3f} (of {n})",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
