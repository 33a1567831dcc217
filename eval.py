"""Evaluate or query a trained jclip model; everything is read from its workdir.

  python eval.py --workdir=/tmp/jclip_quickstart                  # retrieval R@1/5/10 on val
  python eval.py --workdir=/tmp/jclip_quickstart --query_text="a small red circle in the top left"
  python eval.py --workdir=/tmp/jclip_quickstart --query_image=photo.jpg
  python eval.py --workdir=/tmp/jclip_quickstart --query_image=photo.jpg --labels=circle,square
  python eval.py --workdir=/tmp/f8k --data_root=/data/flickr8k --split=test
  python eval.py --workdir=/tmp/f8k --querybank=train                    # + QB-Norm figures
  python eval.py --workdir=/tmp/jclip_quickstart --suite --probs_for_image=0   # everything

  python eval.py --workdir=/tmp/jclip_quickstart --step=latest                  # not the best step
  python eval.py --workdir=/tmp/f8k_lit --labelled_images=/data/stimuli.csv   # labelled images

  python eval.py --workdir=/tmp/jclip_quickstart --prompt_study=docs/prompt_study_shapes.json
  python eval.py --workdir=/tmp/jclip_quickstart --template_sets=docs/template_sets_shapes.json
  python eval.py --workdir=/tmp/jclip_quickstart --compare_workdirs=/tmp/run2,/tmp/run3

  python eval.py --workdir=/tmp/jclip_quickstart --images=~/Photos --query_text="a red circle"
  python eval.py --workdir=/tmp/jclip_quickstart --images=~/Photos --duplicates=0.95 --outliers

It loads the run's best checkpoint (by the config's best_metric) when there is one, else the latest;
--step picks another. Every flag, the query image, the checkpoint and the split are checked before
the model is restored or anything is embedded. Results go to <workdir>/eval/:
<split>_retrieval.json, a JSON per query (and a PNG grid per text query); the split's embeddings
are kept in <workdir>/eval/embeddings/, so the next query of the same checkpoint embeds only the
query. On a classifier's workdir (configs/flickr4_*_classifier.py) it reports accuracy, macro
precision / recall / F1 and a confusion matrix instead, or classifies a --query_image (image
classifier) or --query_text (text classifier). --suite adds zero-shot classification, a similarity
heatmap, probes, a 2-D projection and the training curves, each as JSON (and PNG); see
jclip/evaluation/suite.py. --labelled_images evaluates the model on a bank of labelled images
(class folders, or a CSV/TSV of files and labels): zero-shot next to k-NN and logistic regression
on a stratified, seeded split; see jclip/evaluation/labelled.py. When a run trained on a folder,
evaluated images that are files of its training split are counted, with a warning. The studies
(--prompt_study, --template_sets: prompts chosen on some images and scored on others;
--compare_workdirs: several runs in one table) run instead of the report, by
jclip/evaluation/studies.py. The rest of the work is jclip/evaluation/report.py's.

With --images, the queries search a folder of one's own images instead of a split: the folder is
embedded into an index on disk (<workdir>/index/<folder>_<digest>, or --index; a rerun embeds only
new or changed files), then searched by text or image, or cleaned (--duplicates, --off_topic,
--outliers); results go to <workdir>/eval/ (or --out_dir) as JSON, a PNG grid and an HTML page.
The work is jclip/collection/report.py's. Each batch is embedded on every local device, and
compiled programs are kept for the next run (--compilation_cache).
"""

from absl import app, flags

from jclip.cli import (
  define_compilation_cache_flag,
  parse_flags,
  run_reporting_user_errors,
  use_compilation_cache,
)
from jclip.collection.report import CollectionRequest, run_collection
from jclip.data.labelled import IMAGE_COLUMN, LABEL_COLUMN
from jclip.errors import UserError
from jclip.evaluation.labelled import LabelledOptions
from jclip.evaluation.plots import PROJECTION_METHODS
from jclip.evaluation.prompt_study import load_prompt_study
from jclip.evaluation.report import (
  EvalRequest,
  LabelledRequest,
  evaluate_labelled_images,
  evaluate_workdir,
)
from jclip.evaluation.studies import StudyRequest, run_studies
from jclip.evaluation.suite import SuiteOptions
from jclip.evaluation.template_sets import load_template_sets
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
  "Print the --top_k images of the split closest to this text (by file), and save them as JSON "
  "and a PNG grid. On a text classifier's workdir: the sentence's class probabilities.",
)
_QUERY_IMAGE = flags.DEFINE_string(
  "query_image",
  None,
  "Path to an image file (any size; read upright by its EXIF orientation before anything else "
  "is loaded): print the --top_k captions of the split closest to it, saved as JSON. With "
  "--labels: its zero-shot probabilities among them instead. On an image classifier's workdir: "
  "its class probabilities.",
)
_LABELS = flags.DEFINE_list(
  "labels",
  None,
  "With --query_image: comma-separated class names (--labels=dog,cat,bike) among which the image "
  "is classified zero-shot, each written into the 8 default prompt templates; no split is read.",
)
_QUERYBANK = flags.DEFINE_string(
  "querybank",
  None,
  "A split of the run's data (e.g. train) whose captions and images serve as a bank of queries "
  "for querybank normalisation (QB-Norm, Bogolin et al. 2022): the retrieval report adds the "
  "figures with each gallery item's score taken relative to how close it comes to the bank's "
  "queries, which demotes 'hubs' that sit near every query. The plain figures are printed first.",
)
_QUERYBANK_SIZE = flags.DEFINE_integer(
  "querybank_size",
  10_000,
  "With --querybank: how many of the split's first images (and their captions) form the bank.",
  lower_bound=1,
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

# --labelled_images: a CLIP on a bank of labelled images (jclip/evaluation/labelled.py). It also
# reads --templates, --class_prompts, --probe_folds, --probe_neighbors, --step and --batch_size.
_LABELLED_IMAGES = flags.DEFINE_string(
  "labelled_images",
  None,
  "A bank of labelled images to evaluate on instead of the run's data: a folder of class "
  "folders (<folder>/<class>/<image>), or a .csv/.tsv table of image paths and labels. Zero-shot, "
  "k-NN and logistic regression are scored on the same held-out images (--test_fraction of each "
  "class); files go to <workdir>/eval/<bank name>_*.",
)
_IMAGE_COLUMN = flags.DEFINE_string(
  "image_column",
  IMAGE_COLUMN,
  "With --labelled_images and a table: the column of image paths (relative to the table's folder).",
)
_LABEL_COLUMN = flags.DEFINE_string(
  "label_column", LABEL_COLUMN, "With --labelled_images and a table: the column of class labels."
)
_CAPTION_COLUMN = flags.DEFINE_string(
  "caption_column",
  None,
  "With --labelled_images and a table: a column of captions, if it has one. Every column not "
  "named by these flags is kept as the image's metadata (in <bank>_predictions.csv).",
)
_CLASS_NAMES = flags.DEFINE_list(
  "class_names",
  None,
  "With --labelled_images: the classes, comma-separated, in the order to report them; a label "
  "outside them is an error. Default: the labels found, sorted.",
)
_TEST_FRACTION = flags.DEFINE_float(
  "test_fraction",
  LabelledOptions.test_fraction,
  "With --labelled_images: the fraction of each class held out to score every method on; the "
  "rest trains k-NN and logistic regression.",
)
_SPLIT_SEED = flags.DEFINE_integer(
  "split_seed", LabelledOptions.split_seed, "With --labelled_images: the seed of the split."
)
LABELLED_FLAGS = (
  _IMAGE_COLUMN,
  _LABEL_COLUMN,
  _CAPTION_COLUMN,
  _CLASS_NAMES,
  _TEST_FRACTION,
  _SPLIT_SEED,
)
NOT_FOR_LABELLED = (
  "suite",
  "split",
  "data_root",
  "query_text",
  "query_image",
  "top_k",
  "prompt_study",
  "template_sets",
  "compare_workdirs",
  "querybank",
  "labels",
)

# The studies (jclip/evaluation/studies.py): prompts chosen on some images and scored on others,
# and several workdirs side by side. They run instead of the retrieval report.
_PROMPT_STUDY = flags.DEFINE_string(
  "prompt_study",
  None,
  "A JSON prompt study (jclip/evaluation/prompt_study.py; e.g. docs/prompt_study_shapes.json): "
  "zero-shot accuracy, overall and per class, with 0 to --max_attributes attributes of each "
  "class in its prompt, chosen greedily on the selection images and scored on the others, "
  "against control words chosen the same way. -> <workdir>/eval/<split>_prompt_study.json/.png",
)
_TEMPLATE_SETS = flags.DEFINE_string(
  "template_sets",
  None,
  "A JSON file of named zero-shot template sets, {name: ['a photo of a {}.', ...]} (e.g. "
  "docs/template_sets_shapes.json): each scored on the selection and the other images; the set "
  "the selection images pick is marked. -> <workdir>/eval/<split>_template_sets.json/.png",
)
_COMPARE_WORKDIRS = flags.DEFINE_list(
  "compare_workdirs",
  None,
  "Other CLIP workdirs, comma-separated: one table of --workdir and these, each on the --split "
  "of its own data (and its --step checkpoint): retrieval R@1/5/10 both ways and rsum, zero-shot "
  "top-1, the similarity separation. -> <workdir>/eval/<split>_compare_workdirs.json/.png",
)
_SELECTION_SPLIT = flags.DEFINE_string(
  "selection_split",
  None,
  "With --prompt_study or --template_sets: the split whose images choose the prompts (e.g. "
  "train); --split's images are scored. Default: --split cut in two (--selection_fraction).",
)
_SELECTION_FRACTION = flags.DEFINE_float(
  "selection_fraction",
  0.5,
  "With --prompt_study or --template_sets and no --selection_split: the fraction of each class "
  "of --split whose images choose the prompts; the others are scored.",
)
_MAX_ATTRIBUTES = flags.DEFINE_integer(
  "max_attributes", 3, "With --prompt_study: the most attributes per class (k).", lower_bound=1
)
_STUDY_SEED = flags.DEFINE_integer(
  "study_seed",
  0,
  "With --prompt_study or --template_sets: seeds the cut of --split and the control words.",
)
PROMPT_CHOICE_FLAGS = (_SELECTION_SPLIT, _SELECTION_FRACTION, _STUDY_SEED)

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
# What --images replaces, or does not combine with: a split, the suite and the studies on it.
SPLIT_FLAGS = (
  _SPLIT,
  _DATA_ROOT,
  _SUITE,
  *SUITE_FLAGS,
  _QUERYBANK,
  _LABELS,
  _LABELLED_IMAGES,
  _PROMPT_STUDY,
  _TEMPLATE_SETS,
  _COMPARE_WORKDIRS,
)
flags.mark_flags_as_required(["workdir"])


def _labelled_request() -> LabelledRequest | None:
  """--labelled_images' request from its flags; None without it."""
  if not _LABELLED_IMAGES.value:
    unused = [f"--{flag.name}" for flag in LABELLED_FLAGS if flag.present]
    if unused:
      raise UserError(f"{', '.join(unused)} only apply to --labelled_images.")
    return None
  ignored = [
    f"--{name}"
    for name in NOT_FOR_LABELLED + ("probs_for_image", "projection", "similarity_pairs")
    if flags.FLAGS[name].present
  ]
  if ignored:
    raise UserError(f"{', '.join(ignored)} do not apply to --labelled_images: leave them out.")
  return LabelledRequest(
    workdir=_WORKDIR.value,
    labelled_images=_LABELLED_IMAGES.value,
    step=_STEP.value,
    image_column=_IMAGE_COLUMN.value,
    label_column=_LABEL_COLUMN.value,
    caption_column=_CAPTION_COLUMN.value,
    class_names=_CLASS_NAMES.value,
    options=LabelledOptions(
      templates=load_templates(_TEMPLATES.value) if _TEMPLATES.value else None,
      class_prompts=load_class_prompts(_CLASS_PROMPTS.value) if _CLASS_PROMPTS.value else None,
      test_fraction=_TEST_FRACTION.value,
      split_seed=_SPLIT_SEED.value,
      probe_folds=_PROBE_FOLDS.value,
      probe_neighbors=_PROBE_NEIGHBORS.value,
    ),
    batch_size=_BATCH_SIZE.value,
  )


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


def _study_request() -> StudyRequest | None:
  """The studies asked for (their files read and checked now), or None."""
  choose_prompts = _PROMPT_STUDY.value or _TEMPLATE_SETS.value
  unused = [f"--{flag.name}" for flag in PROMPT_CHOICE_FLAGS if flag.present]
  if unused and not choose_prompts:
    raise UserError(f"{', '.join(unused)} only apply to --prompt_study and --template_sets.")
  if _MAX_ATTRIBUTES.present and not _PROMPT_STUDY.value:
    raise UserError("--max_attributes only applies to --prompt_study.")
  if not (choose_prompts or _COMPARE_WORKDIRS.value):
    return None
  others = [f"--{flag.name}" for flag in (_SUITE, _QUERY_TEXT, _QUERY_IMAGE) if flag.present]
  if others:
    raise UserError(
      f"{', '.join(others)} and the studies (--prompt_study, --template_sets, "
      "--compare_workdirs) run in separate eval.py commands."
    )
  if _SELECTION_SPLIT.present and _SELECTION_FRACTION.present:
    raise UserError(
      "Give --selection_split (another split chooses) or --selection_fraction (--split is cut "
      "in two), not both."
    )
  return StudyRequest(
    workdir=_WORKDIR.value,
    step=_STEP.value,
    split=_SPLIT.value,
    data_root=_DATA_ROOT.value,
    batch_size=_BATCH_SIZE.value,
    prompt_study=load_prompt_study(_PROMPT_STUDY.value) if _PROMPT_STUDY.value else None,
    template_sets=load_template_sets(_TEMPLATE_SETS.value) if _TEMPLATE_SETS.value else None,
    compare_workdirs=tuple(_COMPARE_WORKDIRS.value or ()),
    selection_split=_SELECTION_SPLIT.value,
    selection_fraction=_SELECTION_FRACTION.value,
    max_attributes=_MAX_ATTRIBUTES.value,
    seed=_STUDY_SEED.value,
  )


def _main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  use_compilation_cache(_COMPILATION_CACHE.value)
  collection = _collection_request()
  if collection is not None:
    run_collection(collection)
    return
  labelled = _labelled_request()
  if labelled is not None:
    evaluate_labelled_images(labelled)
    return
  suite, studies = _suite_options(), _study_request()
  if studies is not None:
    run_studies(studies)
    return
  evaluate_workdir(
    EvalRequest(
      workdir=_WORKDIR.value,
      step=_STEP.value,
      split=_SPLIT.value,
      data_root=_DATA_ROOT.value,
      query_text=_QUERY_TEXT.value,
      query_image=_QUERY_IMAGE.value,
      labels=_LABELS.value,
      querybank=_QUERYBANK.value,
      querybank_size=_QUERYBANK_SIZE.value,
      top_k=_TOP_K.value,
      batch_size=_BATCH_SIZE.value,
      suite=suite,
    )
  )


def main(argv):
  run_reporting_user_errors(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
