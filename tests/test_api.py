"""jclip.load and jclip.Model: the same embeddings as evaluation, on any image a user has, and
classifiers that say what they can do."""

import numpy as np
import pytest
from PIL import Image

import jclip
from conftest import embedded_split, tiny_clip_config
from jclip.data.images import ImageFileError, resize_and_center_crop
from jclip.data.sources import make_source
from jclip.data.synthetic import KINDS
from jclip.errors import UserError
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.evaluators import ZeroShotEvaluator
from jclip.runs.restore import restore_model
from jclip.training import loop

EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
  """The tiny CLIP trained for 6 steps; its best checkpoint (by val/rsum) is kept."""
  return tiny_workdir


@pytest.fixture(scope="module")
def model(workdir):
  return jclip.load(workdir)


@pytest.fixture(scope="module")
def val_images(model):
  """The val split's images, uint8 [24, 16, 16, 3], as the source holds them."""
  source = make_source(model.config.data, "val")
  return np.stack([source[i]["image"] for i in range(len(source))])


def _classifier_workdir(tmp_path_factory, task: str) -> str:
  config = tiny_clip_config()
  config.task, config.model.num_classes = task, len(KINDS)
  config.num_steps, config.optim.warmup_steps = 2, 1
  config.evals.val.type, config.best_metric = "classification", "val/top1"
  del config.evals["zeroshot"]
  workdir = str(tmp_path_factory.mktemp(task))
  loop.train(config, workdir)
  return workdir


def test_load_takes_the_best_checkpoint_unless_told(workdir, model):
  restored = restore_model(workdir)
  assert model.step == restored.step and "best" in repr(model)
  latest = jclip.load(workdir, step="latest")
  assert latest.step == 6 and latest.kind == "clip"


def test_embeddings_are_evaluation_s_own(model, workdir, val_images):
  """The API and eval.py embed a split's images and captions to the same unit vectors."""
  embedded = embedded_split(restore_model(workdir))
  image_emb_ND = model.encode_images(list(val_images))
  assert image_emb_ND.dtype == np.float32 and image_emb_ND.shape == embedded.image_emb_ND.shape
  np.testing.assert_allclose(np.linalg.norm(image_emb_ND, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(image_emb_ND, embedded.image_emb_ND, atol=1e-5)
  np.testing.assert_allclose(
    model.encode_texts(embedded.captions[:7]), embedded.text_emb_MD[:7], atol=1e-5
  )


def test_batch_size_does_not_change_an_embedding(model, val_images):
  np.testing.assert_allclose(
    model.encode_images(list(val_images[:5]), batch_size=2),
    model.encode_images(list(val_images[:5])),
    atol=1e-6,
  )


def test_any_size_and_mode_is_resized_and_centre_cropped_the_model_s_way(model):
  """A 60 x 40 RGBA array, its file, its Pillow image and the model-sized RGB crop embed alike;
  an image left at 60 x 40 would not even fit the tower's input shape."""
  rng = np.random.default_rng(0)
  rgba_HW4 = rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)
  rgba_HW4[..., 3] = 255
  cropped_SS3 = resize_and_center_crop(Image.fromarray(rgba_HW4), model.image_size)
  assert cropped_SS3.shape == (16, 16, 3)
  expected_1D = model.encode_images([cropped_SS3])
  np.testing.assert_allclose(model.encode_images(rgba_HW4), expected_1D, atol=1e-6)
  np.testing.assert_allclose(model.encode_images(Image.fromarray(rgba_HW4)), expected_1D, atol=1e-6)
  grey_HW = rgba_HW4[..., 0]
  np.testing.assert_allclose(
    model.encode_images([grey_HW]), model.encode_images([np.repeat(grey_HW[..., None], 3, -1)])
  )


def test_exif_orientation_is_applied(model, tmp_path):
  """A phone photo stored sideways with orientation 6 (rotate 90 degrees clockwise to view)
  embeds as the upright image."""
  upright_HW3 = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
  stored = Image.fromarray(upright_HW3).transpose(Image.Transpose.ROTATE_90)  # 24 x 16, sideways
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6
  stored.save(tmp_path / "sideways.png", exif=exif)
  np.testing.assert_allclose(
    model.encode_images(str(tmp_path / "sideways.png")), model.encode_images(upright_HW3), atol=1e-6
  )


def test_a_folder_embeds_every_image_under_it_in_list_images_order(model, val_images, tmp_path):
  (tmp_path / "b").mkdir()
  Image.fromarray(val_images[0]).save(tmp_path / "b" / "first.png")
  Image.fromarray(val_images[1]).save(tmp_path / "a.png")
  Image.fromarray(val_images[2]).save(tmp_path / ".hidden.png")
  (tmp_path / "notes.txt").write_text("not an image")
  paths = jclip.list_images(tmp_path)
  assert paths == [str(tmp_path / "a.png"), str(tmp_path / "b" / "first.png")]
  np.testing.assert_allclose(
    model.encode_images(tmp_path), model.encode_images(list(val_images[[1, 0]])), atol=1e-6
  )


def test_similarity_is_the_cosine_of_the_embeddings(model, val_images):
  texts = ["a large red circle in the top left", "a small blue square"]
  sim_NM = model.similarity(list(val_images[:3]), texts)
  assert sim_NM.shape == (3, 2) and np.all(np.abs(sim_NM) <= 1 + 1e-5)
  np.testing.assert_allclose(
    sim_NM, model.encode_images(list(val_images[:3])) @ model.encode_texts(texts).T, atol=1e-6
  )


def test_zero_shot_agrees_with_the_zero_shot_evaluator(model, workdir, val_images):
  restored = restore_model(workdir)
  split = EvalSplit(make_source(restored.config.data, "val"), restored.config, restored.tokenizer)
  evaluator = ZeroShotEvaluator(
    split, Predictor(restored.model, restored.tokenizer, restored.config)
  )
  expected_NC = evaluator(restored.variables)["logits_NC"]
  probs_NC = model.zero_shot(list(val_images), list(KINDS))
  np.testing.assert_allclose(probs_NC.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(probs_NC.argmax(axis=1), expected_NC.argmax(axis=1))


def test_zero_shot_prompts_replace_a_class_s_templates(model, val_images):
  images = list(val_images[:4])
  default_NC = model.zero_shot(images, ["circle", "square"])
  prompts_NC = model.zero_shot(images, ["circle", "square"], prompts={"circle": ["a red dot"]})
  assert not np.allclose(default_NC, prompts_NC)
  templates_NC = model.zero_shot(images, ["circle", "square"], templates=["a {}."])
  assert not np.allclose(default_NC, templates_NC)


def test_bad_input_is_named(model, tmp_path):
  truncated = tmp_path / "truncated.jpg"
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:100])
  with pytest.raises(ImageFileError, match="truncated.jpg cannot be decoded"):
    model.encode_images([str(truncated)])
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    model.encode_images([str(tmp_path / "missing.jpg")])
  with pytest.raises(ImageFileError, match="dtype float32"):
    model.encode_images(np.zeros((8, 8, 3), np.float32))
  with pytest.raises(UserError, match="No images were given"):
    model.encode_images([])
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="holds no image files"):
    model.encode_images(tmp_path / "empty")
  with pytest.raises(UserError, match="Text 1 is ''"):
    model.encode_texts(["a circle", ""])
  with pytest.raises(UserError, match="this model is a CLIP"):
    model.classify([np.zeros((16, 16, 3), np.uint8)])


def test_the_fingerprint_tells_checkpoints_apart(workdir, model):
  assert jclip.load(workdir).fingerprint == model.fingerprint
  assert jclip.load(workdir, step="latest").fingerprint != model.fingerprint


def test_an_image_classifier_classifies_and_says_what_it_cannot_do(tmp_path_factory, val_images):
  classifier = jclip.load(_classifier_workdir(tmp_path_factory, "image_classifier"))
  assert classifier.kind == "image_classifier" and classifier.class_names == list(KINDS)
  probs_NC = classifier.classify(list(val_images[:3]))
  assert probs_NC.shape == (3, len(KINDS))
  np.testing.assert_allclose(probs_NC.sum(axis=1), 1.0, atol=1e-5)
  with pytest.raises(UserError, match=r"image classifier \(5 classes: circle.*classify\(images\)"):
    classifier.encode_images(list(val_images[:1]))
  with pytest.raises(UserError, match="needs a CLIP model"):
    classifier.zero_shot(list(val_images[:1]), ["circle", "square"])


def test_a_text_classifier_classifies_sentences(tmp_path_factory):
  classifier = jclip.load(_classifier_workdir(tmp_path_factory, "text_classifier"))
  probs_NC = classifier.classify(["a large red circle in the centre", "a small blue square"])
  assert probs_NC.shape == (2, len(KINDS)) and classifier.class_names == list(KINDS)
  with pytest.raises(UserError, match=r"classify\(texts\)"):
    classifier.encode_texts(["a circle"])


def test_the_predictor_refuses_images_not_at_the_model_s_size(workdir):
  """A CNN's pooling would embed a 32 px image given to a 16 px model, into a vector that means
  little: the batch path refuses it, naming the size and what resizes."""
  restored = restore_model(workdir)
  predictor = Predictor(restored.model, restored.tokenizer, restored.config)
  with pytest.raises(UserError, match=r"this model takes \[B, 16, 16, 3\].*encode_images resizes"):
    predictor.image_batch(restored.variables, np.zeros((2, 32, 32, 3), np.float32))
