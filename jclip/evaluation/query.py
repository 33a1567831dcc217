"""Text -> images and image -> captions queries against an embedded gallery; a PNG of the hits."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def top_k(query_emb_D: np.ndarray, gallery_emb_ND: np.ndarray, k: int):
  """(indices [k], cosine similarities [k]) of the k gallery items closest to the query, best first;
  equal scores keep gallery order."""
  scores_N = gallery_emb_ND @ query_emb_D
  order = np.argsort(-scores_N, kind="stable")[:k]
  return order, scores_N[order]


def save_image_grid(
  images: Sequence[np.ndarray], titles: Sequence[str], path: str, suptitle: str = ""
) -> None:
  """Writes images side by side with a title over each (its lines wrapped at 28 characters)."""
  fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 3.6), squeeze=False)
  for ax, image, title in zip(axes[0], images, titles, strict=True):
    ax.imshow(image)
    lines = [wrapped for line in title.split("\n") for wrapped in textwrap.wrap(line, 28)]
    ax.set_title("\n".join(lines), fontsize=8)
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
