"""An HTML page of images with a caption under each, to look at results in a browser: a query's
hits, near-duplicate pairs side by side. The page links the images where they are (no copies), by
paths relative to the page, so it opens from disk without a server."""

from __future__ import annotations

import html
import os
import pathlib
import urllib.parse
from collections.abc import Sequence

_STYLE = """body { font-family: sans-serif; margin: 1em; }
.row { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 16px; }
figure { margin: 0; width: 220px; }
img { width: 220px; height: 220px; object-fit: contain; background: #eee; }
figcaption { font-size: 12px; word-break: break-all; }"""


def image_link(image_path: str, page_dir: str) -> str:
  """The URL of an image from a page in page_dir: a relative path, or a file URI where there is
  none (another drive on Windows)."""
  try:
    relative = os.path.relpath(image_path, page_dir)
  except ValueError:
    return pathlib.Path(image_path).absolute().as_uri()
  return urllib.parse.quote(pathlib.Path(relative).as_posix())


def write_image_page(
  path: str, title: str, rows: Sequence[Sequence[tuple[str, str]]], note: str = ""
) -> None:
  """Writes an HTML page: `title`, `note`, then each row of (image path, caption) side by side,
  each image a link to itself; a caption's lines stay lines."""
  page_dir = os.path.dirname(os.path.abspath(path))
  parts = [
    "<!DOCTYPE html>",
    '<html><head><meta charset="utf-8">',
    f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
    f"<h1>{html.escape(title)}</h1>",
  ]
  if note:
    parts.append(f"<p>{html.escape(note)}</p>")
  for row in rows:
    parts.append('<div class="row">')
    for image_path, caption in row:
      link = html.escape(image_link(image_path, page_dir))
      lines = "<br>".join(html.escape(line) for line in caption.split("\n"))
      parts.append(
        f'<figure><a href="{link}"><img src="{link}" loading="lazy" alt=""></a>'
        f"<figcaption>{lines}</figcaption></figure>"
      )
    parts.append("</div>")
  parts.append("</body></html>")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(parts) + "\n")
