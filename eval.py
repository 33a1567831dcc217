"""Evaluate or query a trained jclip model; everything is read from its workdir.

  python eval.py --workdir=/tmp/jclip_quickstart                  # retrieval R@1/5/10 on val
  python eval.py --workdir=/tmp/jclip_quickstart --query_text="a small red circle in the top left"
  python eval.py --workdir=/tmp/jclip_quickstart --query_image=photo.jpg
  python eval.py --workdir=/tmp/f8k --data_root=/data/flickr8k --split=test

Results go to <workdir>/eval/: <split>_retrieval.json, and a PNG per text query.
"""

import json
import os
import re

from absl import app, flags

from jclip.cli import run_reporting_user_errors
from jclip.data.images import load_image
from jclip.data.sources import make_source
from jclip.evaluation.embedding import embed_split, load_trained_model
from jclip.evaluation.query import save_image_grid, top_k
from jclip.evaluation.retrieval import retrieval_metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (holds checkpoints/).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate and query against; default: the "
                             "config's eval.split (val).")
_DATA_ROOT = flags.DEFINE_string(
    "data_root", None, "For folder datasets: the image-caption folder to evaluate on, instead of "
    "the config's data.root (e.g. the same data on another machine, or a folder with a test split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the latest.")
_QUERY_TEXT = flags.DEFINE_string("query_text", None, "Print the --top_k images of the split "
                                  "closest to this text, and save them as a PNG grid.")
_QUERY_IMAGE = flags.DEFINE_string("query_image", None, "Path to an image file: print the "
                                   "--top_k captions of the split closest to it.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many results a query returns.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Embedding batch size.")
flags.mark_flags_as_required(["workdir"])


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "query"


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  trained = load_trained_model(_WORKDIR.value, _STEP.value)
  config = trained.config
  split = _SPLIT.value or config.eval.split
  if _DATA_ROOT.value is not None:
    config.data.root = _DATA_ROOT.value
  source = make_source(config.data, split)
  out_dir = os.path.join(_WORKDIR.value, "eval")
  os.makedirs(out_dir, exist_ok=True)
  print(f"Loaded step {trained.step} of {_WORKDIR.value}; embedding {len(source)} {split} images "
        "and their captions.")
  image_emb, text_emb, text_to_image, captions = embed_split(trained, source, _BATCH_SIZE.value)

  if _QUERY_TEXT.value is not None:
    query_emb = trained.embed_texts([_QUERY_TEXT.value])[0]
    indices, scores = top_k(query_emb, image_emb, _TOP_K.value)
    print(f"Top {len(indices)} {split} images for {_QUERY_TEXT.value!r}:")
    for rank, (index, score) in enumerate(zip(indices, scores), 1):
      print(f"  {rank}. image {index}  score {score:.4f}  ({source.captions(index)[0]})")
    path = os.path.join(out_dir, f"query_text_{_slug(_QUERY_TEXT.value)}.png")
    save_image_grid([source[i]["image"] for i in indices],
                    [f"#{i}  {s:.3f}" for i, s in zip(indices, scores)], path,
                    suptitle=_QUERY_TEXT.value)
    print(f"Saved {path}")
  if _QUERY_IMAGE.value is not None:
    image = load_image(_QUERY_IMAGE.value, config.data.image_size)
    query_emb = trained.embed_image_arrays(image[None])[0]
    indices, scores = top_k(query_emb, text_emb, _TOP_K.value)
    print(f"Top {len(indices)} {split} captions for {_QUERY_IMAGE.value}:")
    for rank, (index, score) in enumerate(zip(indices, scores), 1):
      print(f"  {rank}. score {score:.4f}  {captions[index]!r} (image {text_to_image[index]})")
  if _QUERY_TEXT.value is None and _QUERY_IMAGE.value is None:
    metrics = retrieval_metrics(image_emb, text_emb, text_to_image)
    print(f"{split} retrieval ({len(image_emb)} images, {len(text_emb)} captions):")
    for direction in ("i2t", "t2i"):
      print(f"  {direction}: " + "  ".join(f"R@{k}={metrics[f'{direction}_r{k}']:.3f}"
                                          for k in (1, 5, 10)) +
            f"  median rank {metrics[f'{direction}_median_rank']:.0f}")
    path = os.path.join(out_dir, f"{split}_retrieval.json")
    with open(path, "w") as f:
      json.dump(metrics, f, indent=2)
    print(f"Saved {path}")


def main(argv):
  run_reporting_user_errors(_main, argv)


if __name__ == "__main__":
  app.run(main)
