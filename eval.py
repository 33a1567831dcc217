"""Evaluate or query a trained jclip model; everything is read from its workdir.

  python eval.py --workdir=/tmp/jclip_quickstart                  # retrieval R@1/5/10 on val
  python eval.py --workdir=/tmp/jclip_quickstart --query_text="a small red circle in the top left"
  python eval.py --workdir=/tmp/jclip_quickstart --query_image=photo.jpg
  python eval.py --workdir=/tmp/f8k --data_root=/data/flickr8k --split=test
  python eval.py --workdir=/tmp/jclip_quickstart --suite --probs_for_image=0   # everything

  python eval.py --workdir=/tmp/jclip_quickstart --step=latest                  # not the best step

  python eval.py --workdir=/tmp/jclip_quickstart --images=~/Photos --query_text="a red circle"
  python eval.py --workdir=/tmp/jclip_quickstart --images=~/Photos --duplicates=0.95 --outliers

It loads the run's best checkpoint (by the config's best_metric) when there is one, else the latest;
--step picks another. Every flag, the query image, the checkpoint and the split are checked before
the model is restored or anything is embedded. Results go to <workdir>/eval/:
<split>_retrieval.json, and a PNG per text query. On a classifier's workdir
(configs/flickr4_*_classifier.py) it reports accuracy, macro precision / recall / F1 and a confusion
matrix instead. --suite adds zero-shot classification, a
similarity heatmap, probes, a 2-D projection and the training curves, each as JSON (and PNG); see
jclip/evaluation/suite.py. The work itself is jclip/evaluation/report.py's.

With --images, the queries search a folder of one's own images instead of a split: the folder is
embedded into an index on disk (<workdir>/index/<folder>_<digest>, or --index; a rerun embeds only
new or changed files), then searched by text or image, or cleaned (--duplicates, --off_topic,
--outliers); results go to <workdir>/eval/ (or --out_dir) as JSON, a PNG grid and an HTML page.
The work is jclip/collection/report.py's.
"""

from absl import app, flags

from jclip.cli import parse_flags, run_reporting_user_errors
from jclip.collection.report import CollectionRequest, run_collection
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
# A folder of one's own images (jclip/collection/): indexed, then searched and cleaned.
_IMAGES = flags.DEFINE_string(
  "images",
  None,
  "A folder of JPEG/PNG/WebP images (subfolders too): embed it into an index on disk and answer "
  "--query_text, --query_image, --duplicates, --off_topic and --outliers from its images instead "
  "of a split's. A rerun embeds only new or changed files and drops removed ones; an unreadable "
  "file is skipped and listed, and retried once it changes.",
)
_INDEX = flags.DEFINE_string(
  "index",
  None,
  "With --images: the folder of its index; default <workdir>/index/<folder name>_<digest of its "
  "path>. An index belongs to one folder and one model: another's is refused.",
)
_REBUILD_INDEX = flags.DEFINE_bool(
  "rebuild_index",
  False,
  "With --images: embed every image again into a new index, replacing the one at --index (which "
  "may be of another model or folder).",
)
_DUPLICATES = flags.DEFINE_float(
  "duplicates",
  None,
  "With --images: list the pairs of images whose embeddings have at least this cosine "
  "similarity, most similar first (0.95 finds copies re-saved at another JPEG quality or size).",
)
_OFF_TOPIC = flags.DEFINE_string(
  "off_topic",
  None,
  "With --images: list the --top_k images least like this description (e.g. the photos of a "
  "folder of 'a dog on a beach' that show something else).",
)
_OUTLIERS = flags.DEFINE_bool(
  "outliers",
  False,
  "With --images: list the --top_k images furthest from the collection's mean direction (what "
  "least resembles the rest).",
)
_OUT_DIR = flags.DEFINE_string(
  "out_dir", None, "With --images: where the results go; default <workdir>/eval."
)
COLLECTION_FLAGS = (_INDEX, _REBUILD_INDEX, _DUPLICATES, _OFF_TOPIC, _OUTLIERS, _OUT_DIR)
# What --images replaces: a split and the suite on it.
SPLIT_FLAGS = (_SPLIT, _DATA_ROOT, _SUITE, *SUITE_FLAGS)
flags.mark_flags_as_required(["workdir"])


def _collection_request() -> CollectionRequest | None:
  """The --images request from its flags; None without --images (then none of its flags may be
  given)."""
  if _IMAGES.value is None:
    unused = [f"--{flag.name}" for flag in COLLECTION_FLAGS if flag.present]
    if unused:
      raise UserError(f"{', '.join(unused)} only apply to a folder of images: add --images.")
    return None
  unused = [f"--{flag.name}" for flag in SPLIT_FLAGS if flag.present]
  if unused:
    raise UserError(f"{', '.join(unused)} apply to a split, not to --images: leave them out.")
  return CollectionRequest(
    workdir=_WORKDIR.value,
    images=_IMAGES.value,
    step=_STEP.value,
    index=_INDEX.value,
    query_text=_QUERY_TEXT.value,
    query_image=_QUERY_IMAGE.value,
    top_k=_TOP_K.value,
    duplicates=_DUPLICATES.value,
    off_topic=_OFF_TOPIC.value,
    outliers=_OUTLIERS.value,
    rebuild_index=_REBUILD_INDEX.value,
    out_dir=_OUT_DIR.value,
    batch_size=_BATCH_SIZE.value,
  )


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
  collection = _collection_request()
  if collection is not None:
    run_collection(collection)
    return
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
