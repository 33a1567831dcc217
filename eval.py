"""Evaluate or query a trained jclip model; everything is read from its workdir.

  python eval.py --workdir=/tmp/jclip_quickstart                  # retrieval R@1/5/10 on val
  python eval.py --workdir=/tmp/jclip_quickstart --query_text="a small red circle in the top left"
  python eval.py --workdir=/tmp/jclip_quickstart --query_image=photo.jpg
  python eval.py --workdir=/tmp/f8k --data_root=/data/flickr8k --split=test
  python eval.py --workdir=/tmp/jclip_quickstart --suite --probs_for_image=0   # everything

Results go to <workdir>/eval/: <split>_retrieval.json, and a PNG per text query. On a classifier's
workdir (configs/flickr4_*_classifier.py) it reports accuracy, macro precision / recall / F1 and a
confusion matrix instead. --suite adds
zero-shot classification, a similarity heatmap, probes, a 2-D projection and the training curves,
each as JSON (and PNG); see jclip/evaluation/suite.py.
"""

import json
import os
import re

from absl import app, flags

from jclip.cli import run_reporting_user_errors
from jclip.data.images import load_image
from jclip.data.sources import make_source
from jclip.evaluation.classifier import evaluate_classifier
from jclip.evaluation.embedding import TrainedModel, embed_split, load_checkpoint
from jclip.evaluation.plots import PROJECTION_METHODS
from jclip.evaluation.query import save_image_grid, top_k
from jclip.evaluation.retrieval import retrieval_metrics
from jclip.evaluation.suite import (SuiteOptions, check_options, class_names_of, labels_of,
                                    run_suite)
from jclip.evaluation.zeroshot import load_class_prompts, load_templates
from jclip.models.clip import build_clip

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
_SUITE = flags.DEFINE_bool(
    "suite", False, "Also run the whole evaluation suite on the split: zero-shot classification, "
    "a similarity heatmap, linear and k-NN probes on the image and on the caption embeddings, a "
    "2-D projection of the image embeddings and the training curves, each to <workdir>/eval/ as "
    "JSON (and PNG). Splits without class labels get the similarity and the curves only.")
_TEMPLATES = flags.DEFINE_string(
    "templates", None, "With --suite: a text file of zero-shot prompt templates, one per line, "
    "each with '{}' where the class name goes; default: the 8 templates of "
    "jclip.evaluation.zeroshot.DEFAULT_TEMPLATES.")
_CLASS_PROMPTS = flags.DEFINE_string(
    "class_prompts", None, "With --suite: a JSON file {class_name: [prompt, ...]} of full "
    "sentences that replace the templates for the classes it names.")
_PROBS_FOR_IMAGE = flags.DEFINE_integer(
    "probs_for_image", None, "With --suite: print (and save as JSON) the zero-shot probability "
    "of every class for the image of the split with this index.", lower_bound=0)
_PROBE_FOLDS = flags.DEFINE_integer(
    "probe_folds", 5, "With --suite: cross-validation folds of the probes; every class needs at "
    "least this many images, else the probes are skipped with a note.", lower_bound=2)
_PROBE_NEIGHBORS = flags.DEFINE_integer("probe_neighbors", 5, "With --suite: k of the k-NN probe.",
                                        lower_bound=1)
_PROJECTION = flags.DEFINE_enum(
    "projection", "pca", PROJECTION_METHODS, "With --suite: how the image embeddings are drawn in "
    "2-D: pca (linear, distances can be read) or umap (clusters show more; needs umap-learn).")
_SIMILARITY_PAIRS = flags.DEFINE_integer(
    "similarity_pairs", 8, "With --suite: how many image-caption pairs, spread over the split, the "
    "similarity heatmap shows.", lower_bound=2)
SUITE_FLAGS = (_TEMPLATES, _CLASS_PROMPTS, _PROBS_FOR_IMAGE, _PROBE_FOLDS, _PROBE_NEIGHBORS,
               _PROJECTION, _SIMILARITY_PAIRS)
flags.mark_flags_as_required(["workdir"])


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "query"


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unused = [f"--{flag.name}" for flag in SUITE_FLAGS if flag.present]
  if unused and not _SUITE.value:
    raise app.UsageError(f"{', '.join(unused)} only apply to the suite: add --suite.")
  config, state, tokenizer, step = load_checkpoint(_WORKDIR.value, _STEP.value)
  split = _SPLIT.value or config.eval.split
  if _DATA_ROOT.value is not None:
    config.data.root = _DATA_ROOT.value
  source = make_source(config.data, split)
  out_dir = os.path.join(_WORKDIR.value, "eval")
  os.makedirs(out_dir, exist_ok=True)
  if config.get("task", "clip") != "clip":
    if _SUITE.value or _QUERY_TEXT.value is not None or _QUERY_IMAGE.value is not None:
      raise app.UsageError(f"{_WORKDIR.value} holds a {config.task}: queries and --suite need a "
                           "CLIP workdir. Without them eval.py reports its classification metrics.")
    print(f"Loaded step {step} of {_WORKDIR.value}.")
    evaluate_classifier(config, state, tokenizer, source, split, out_dir, _BATCH_SIZE.value)
    return
  trained = TrainedModel(build_clip(config.model), state.variables, config, tokenizer, step)
  if _SUITE.value:
    # Files are read and options checked now, not after minutes of embedding.
    suite_options = SuiteOptions(
        templates=load_templates(_TEMPLATES.value) if _TEMPLATES.value else None,
        class_prompts=load_class_prompts(_CLASS_PROMPTS.value) if _CLASS_PROMPTS.value else None,
        probs_for_image=_PROBS_FOR_IMAGE.value, probe_folds=_PROBE_FOLDS.value,
        probe_neighbors=_PROBE_NEIGHBORS.value, projection=_PROJECTION.value,
        similarity_pairs=_SIMILARITY_PAIRS.value)
    check_options(suite_options, class_names_of(source), len(source))
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
  if _SUITE.value:
    run_suite(trained, source, class_names_of(source), labels_of(source),
              (image_emb, text_emb, text_to_image, captions), out_dir, _WORKDIR.value,
              suite_options)


def main(argv):
  run_reporting_user_errors(_main, argv)


if __name__ == "__main__":
  app.run(main)
