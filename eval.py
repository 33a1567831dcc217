"""Evaluate or query a trained jclip model; everything is read from its workdir.

  python eval.py --workdir=/tmp/jclip_quickstart                  # retrieval R@1/5/10 on val
  python eval.py --workdir=/tmp/jclip_quickstart --query_text="a small red circle in the top left"
  python eval.py --workdir=/tmp/jclip_quickstart --query_image=photo.jpg
  python eval.py --workdir=/tmp/f8k --data_root=/data/flickr8k --split=test
  python eval.py --workdir=/tmp/jclip_quickstart --suite --probs_for_image=0   # everything

  python eval.py --workdir=/tmp/jclip_quickstart --step=latest                  # not the best step

It loads the run's best checkpoint (by the config's best_metric) when there is one, else the latest;
--step picks another. Every flag, the query image, the checkpoint and the split are checked before
the model is restored or anything is embedded. Results go to <workdir>/eval/:
<split>_retrieval.json, and a PNG per text query. On a classifier's workdir
(configs/flickr4_*_classifier.py) it reports accuracy, macro precision / recall / F1 and a confusion
matrix instead. --suite adds zero-shot classification, a
similarity heatmap, probes, a 2-D projection and the training curves, each as JSON (and PNG); see
jclip/evaluation/suite.py. The work itself is jclip/evaluation/report.py's. Each batch is embedded
on every local device, and compiled programs are kept for the next run (--compilation_cache).
"""

from absl import app, flags

from jclip.cli import (
  define_compilation_cache_flag,
  parse_flags,
  run_reporting_user_errors,
  use_compilation_cache,
)
from jclip.errors import UserError
from jclip.evaluation.plots import PROJECTION_METHODS
from jclip.evaluation.report import EvalRequest, evaluate_workdir
from jclip.evaluation.suite import SuiteOptions
from jclip.evaluation.zeroshot import load_class_prompts, load_templates

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (holds checkpoints/).")
_SPLIT = flags.DEFINE_string("split", "val", "Split to evaluate and query against.")
_DATA_ROOT = flags.DEFINE_string(
  "data_root",
  None,
  "For folder datasets only: the image-caption folder to evaluate on, instead "
  "of the config's data.root (e.g. the same data on another machine, or a folder with a test "
  "split).",
)
_STEP = flags.DEFINE_string(
  "step",
  None,
  "Which checkpoint: 'best' (the step where the run's config.best_metric was "
  "highest), 'latest', or a step number. Default: the best when the run kept one, else the "
  "latest. The printout says which step was loaded and why.",
)
_QUERY_TEXT = flags.DEFINE_string(
  "query_text",
  None,
  "Print the --top_k images of the split closest to this text, and save them as a PNG grid.",
)
_QUERY_IMAGE = flags.DEFINE_string(
  "query_image",
  None,
  "Path to an image file: print the --top_k captions of the split closest "
  "to it. It is read (upright, by its EXIF orientation) before anything else is loaded.",
)
_TOP_K = flags.DEFINE_integer("top_k", 5, "How many results a query returns.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Embedding batch size.", lower_bound=1)
_COMPILATION_CACHE = define_compilation_cache_flag()
_SUITE = flags.DEFINE_bool(
  "suite",
  False,
  "Also run the whole evaluation suite on the split: zero-shot classification, "
  "a similarity heatmap, linear and k-NN probes on the image and on the caption embeddings, a "
  "2-D projection of the image embeddings and the training curves, each to <workdir>/eval/ as "
  "JSON (and PNG). Splits without class labels get the similarity and the curves only.",
)
_TEMPLATES = flags.DEFINE_string(
  "templates",
  None,
  "With --suite: a text file of zero-shot prompt templates, one per line, "
  "each with '{}' where the class name goes; default: the 8 templates of "
  "jclip.evaluation.zeroshot.DEFAULT_TEMPLATES.",
)
_CLASS_PROMPTS = flags.DEFINE_string(
  "class_prompts",
  None,
  "With --suite: a JSON file {class_name: [prompt, ...]} of full "
  "sentences that replace the templates for the classes it names.",
)
_PROBS_FOR_IMAGE = flags.DEFINE_integer(
  "probs_for_image",
  None,
  "With --suite: print (and save as JSON) the zero-shot probability "
  "of every class for the image of the split with this index.",
  lower_bound=0,
)
_PROBE_FOLDS = flags.DEFINE_integer(
  "probe_folds",
  5,
  "With --suite: cross-validation folds of the probes; every class needs at "
  "least this many images, else the probes are skipped with a note.",
  lower_bound=2,
)
_PROBE_NEIGHBORS = flags.DEFINE_integer(
  "probe_neighbors", 5, "With --suite: k of the k-NN probe.", lower_bound=1
)
_PROJECTION = flags.DEFINE_enum(
  "projection",
  "pca",
  PROJECTION_METHODS,
  "With --suite: how the image embeddings are drawn in "
  "2-D: pca (linear, distances can be read) or umap (clusters show more; needs umap-learn).",
)
_SIMILARITY_PAIRS = flags.DEFINE_integer(
  "similarity_pairs",
  8,
  "With --suite: how many image-caption pairs, spread over the split, the "
  "similarity heatmap shows.",
  lower_bound=2,
)
SUITE_FLAGS = (
  _TEMPLATES,
  _CLASS_PROMPTS,
  _PROBS_FOR_IMAGE,
  _PROBE_FOLDS,
  _PROBE_NEIGHBORS,
  _PROJECTION,
  _SIMILARITY_PAIRS,
)
flags.mark_flags_as_required(["workdir"])


def _suite_options() -> SuiteOptions | None:
  """The suite's options from its flags (their files read now, not after minutes of embedding)."""
  if not _SUITE.value:
    unused = [f"--{flag.name}" for flag in SUITE_FLAGS if flag.present]
    if unused:
      raise UserError(f"{', '.join(unused)} only apply to the suite: add --suite.")
    return None
  return SuiteOptions(
    templates=load_templates(_TEMPLATES.value) if _TEMPLATES.value else None,
    class_prompts=load_class_prompts(_CLASS_PROMPTS.value) if _CLASS_PROMPTS.value else None,
    probs_for_image=_PROBS_FOR_IMAGE.value,
    probe_folds=_PROBE_FOLDS.value,
    probe_neighbors=_PROBE_NEIGHBORS.value,
    projection=_PROJECTION.value,
    similarity_pairs=_SIMILARITY_PAIRS.value,
  )


def _main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  use_compilation_cache(_COMPILATION_CACHE.value)
  evaluate_workdir(
    EvalRequest(
      workdir=_WORKDIR.value,
      step=_STEP.value,
      split=_SPLIT.value,
      data_root=_DATA_ROOT.value,
      query_text=_QUERY_TEXT.value,
      query_image=_QUERY_IMAGE.value,
      top_k=_TOP_K.value,
      batch_size=_BATCH_SIZE.value,
      suite=_suite_options(),
    )
  )


def main(argv):
  run_reporting_user_errors(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
