"""File-name-safe slugs of free text (dataset folders, query PNGs)."""

from __future__ import annotations

import re


def slug(text: str, max_len: int = 60, default: str = "") -> str:
  """Lower-case ASCII letters and digits, every other run of characters one "_", at most max_len
  characters: "A dog, running!" -> "a_dog_running". `default` when nothing is left."""
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or default
