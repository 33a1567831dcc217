"""A folder of one's own images: the index on disk (incremental, interrupted, bad files, another
model's), search, near duplicates, off-topic images, the HTML page, and eval.py --images end to end.

Most tests use FakeModel, whose embedding of an image is its pixels, so that what is similar is
known; eval.py runs once on a tiny trained CLIP.
"""

import json
import os
import struct
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import run_eval, tiny_clip_config
from jclip.collection import report
from jclip.collection.build import update_index
from jclip.collection.clean import (
  least_similar_rows,
  mean_direction,
  near_duplicate_pairs,
)
from jclip.collection.index import CollectionIndex
from jclip.collection.pages import write_image_page
from jclip.collection.search import top_k_rows
from jclip.data.images import as_rgb_image, resize_and_center_crop
from jclip.errors import UserError

COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}


class FakeModel:
  """What the index needs of a jclip.Model. An image embeds as its pixels at 16 px, centred on
  grey and normalised: a re-saved or resized copy lands next to its original, independent random
  images far apart. A text is a colour's name and embeds as a plain image of that colour. It
  counts the files it decodes and the images it embeds, and raises on its call number
  `fail_on_call` of encode_images (an interruption)."""

  image_size, embed_dim, workdir, step = 16, 16 * 16 * 3, "fake_workdir", 7

  def __init__(self, fingerprint="fake-a", fail_on_call=None):
    self.fingerprint, self.fail_on_call = fingerprint, fail_on_call
    self.calls = self.embedded = self.decoded = 0

  def preprocess(self, image):
    self.decoded += isinstance(image, (str, os.PathLike))
    return resize_and_center_crop(as_rgb_image(image), self.image_size)

  def encode_images(self, images, batch_size=64):
    self.calls += 1
    if self.calls == self.fail_on_call:
      raise KeyboardInterrupt("interrupted")
    pixels = np.stack([self.preprocess(image) for image in images]).astype(np.float32)
    self.embedded += len(pixels)
    flat = pixels.reshape(len(pixels), -1) - 128
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)

  def encode_texts(self, texts):
    texts = [texts] if isinstance(texts, str) else texts
    return self.encode_images([np.full((16, 16, 3), COLOURS[t], np.uint8) for t in texts])


def random_image(seed, size=64):
  """A smooth random image (4 x 4 random colours, upsampled): uint8 [size, size, 3]."""
  cells = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(cells).resize((size, size), Image.BICUBIC))


def tinted_image(seed, colour, size=64):
  """A colour with a little smooth noise."""
  noise = random_image(seed, size).astype(np.int16) // 4 - 32
  return np.clip(np.asarray(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)


def save(array, path, **options):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **options)
  return path


def random_folder(folder, count, first_seed=0):
  """count random images in three formats and a subfolder: their relative paths."""
  names = []
  for i in range(count):
    name = ["a/img{}.png", "img{}.jpg", "b/c/img{}.webp"][i % 3].format(i)
    options = (
      {"quality": 95} if name.endswith(".jpg") else {"lossless": True} if "webp" in name else {}
    )
    save(random_image(first_seed + i), folder / name, **options)
    names.append(name)
  return sorted(names)


def touch(path, seconds):
  os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def generation_files(index_path):
  return sorted(n for n in os.listdir(index_path) if n.startswith(("embeddings-", "manifest-")))


def test_rerun_embeds_only_new_and_changed_files_and_drops_removed_ones(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  names = random_folder(photos, 6)
  first = FakeModel()
  summary = update_index(first, photos, index_path)
  assert first.embedded == 6 and summary.index.rows == 6 and summary.new == 6
  assert [r["path"] for r in summary.index.records()] == names

  unchanged = FakeModel()
  summary = update_index(unchanged, photos, index_path)
  assert unchanged.decoded == 0 and summary.index.header["generation"] == 1  # nothing rewritten

  save(random_image(100), photos / "new1.png")
  save(random_image(101), photos / "a" / "new2.png")
  changed_path = photos / names[0]
  save(random_image(102), changed_path)
  touch(changed_path, 1_000_000)  # a new time, whatever the file system's resolution
  touch(photos / names[2], 2_000_000)  # the same bytes, but a new time: embedded again
  (photos / names[1]).unlink()
  rerun = FakeModel()
  summary = update_index(rerun, photos, index_path)
  assert rerun.embedded == 4
  assert (summary.new, summary.changed, summary.removed) == (2, 2, 1)
  index = summary.index
  expected = sorted(set(names) - {names[1]} | {"new1.png", "a/new2.png"})
  assert sorted(r["path"] for r in index.records()) == expected
  # Every row is the embedding of its file as it is now, the changed one included.
  now = FakeModel().encode_images(index.paths(range(index.rows)))
  np.testing.assert_allclose(index.embeddings_ND, now, atol=1e-6)
  assert index.complete and generation_files(index_path) == [
    "embeddings-000002.npy",
    "manifest-000002.jsonl",
  ]


def test_interrupted_build_keeps_its_checkpoints_and_a_rerun_embeds_the_rest(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  random_folder(photos, 10)
  # Batches of 2, a commit every 4 images; the 4th batch never comes back.
  interrupted = FakeModel(fail_on_call=4)
  with pytest.raises(KeyboardInterrupt):
    update_index(interrupted, photos, index_path, batch_size=2, checkpoint_every=4)
  assert interrupted.embedded == 6
  index = CollectionIndex.open(index_path)
  assert index.rows == 4 and not index.complete

  rerun = FakeModel()
  summary = update_index(rerun, photos, index_path, batch_size=2, checkpoint_every=4)
  assert (
    rerun.decoded == rerun.embedded == 6 and summary.index.rows == 10 and summary.index.complete
  )
  assert len({r["path"] for r in summary.index.records()}) == 10
  assert len(generation_files(index_path)) == 2  # the interrupted generation's files removed


def decompression_bomb_png(path, side=30_000):
  """A PNG whose header claims side x side pixels (900 MP for 30,000: what a decompression bomb
  claims, in a few bytes)."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", header)
    + chunk(b"IDAT", zlib.compress(bytes(3 * side + 1)))
    + chunk(b"IEND", b"")
  )


def test_unreadable_truncated_and_bomb_files_are_skipped_listed_and_retried_once_changed(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  random_folder(photos, 3)
  whole = save(random_image(50), photos / "truncated.jpg", quality=95).read_bytes()
  (photos / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
  (photos / "not_an_image.png").write_text("hello")
  decompression_bomb_png(photos / "bomb.png")
  model = FakeModel()
  summary = update_index(model, photos, index_path)
  assert model.embedded == 3 and summary.index.rows == 3
  reasons = {record["path"]: record["reason"] for record in summary.index.skipped}
  assert sorted(reasons) == ["bomb.png", "not_an_image.png", "truncated.jpg"]
  assert "decompression bomb" in reasons["bomb.png"]
  assert "truncated" in reasons["truncated.jpg"]
  assert "(3 new, 0 changed, 0 removed; 3 unreadable skipped: listed in" in summary.line()

  unchanged = FakeModel()
  index = update_index(unchanged, photos, index_path).index
  assert unchanged.decoded == 0  # an unchanged bad file is not tried again
  assert index.rows == 3 and index.header["generation"] == 1  # nor the index rewritten

  save(random_image(51), photos / "truncated.jpg")
  touch(photos / "truncated.jpg", 1_000_000)
  repaired = FakeModel()
  summary = update_index(repaired, photos, index_path)
  assert repaired.decoded == 1 and summary.index.rows == 4 and summary.changed == 1
  assert sorted(r["path"] for r in summary.index.skipped) == ["bomb.png", "not_an_image.png"]


def test_a_second_path_to_one_file_is_indexed_once_and_listed(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  random_folder(photos, 2)
  os.symlink(photos / "img1.jpg", photos / "link.jpg")
  os.link(photos / "a" / "img0.png", photos / "z_hard_link.png")
  summary = update_index(FakeModel(), photos, index_path)
  assert sorted(r["path"] for r in summary.index.records()) == ["a/img0.png", "img1.jpg"]
  same_as = {record["path"]: record["same_as"] for record in summary.index.skipped}
  assert same_as == {"link.jpg": "img1.jpg", "z_hard_link.png": "a/img0.png"}
  assert "2 second paths to a file skipped" in summary.line()


def test_an_empty_or_missing_folder_is_an_error_and_leaves_the_index(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  (photos / "sub").mkdir(parents=True)
  (photos / "notes.txt").write_text("no images here")
  with pytest.raises(UserError, match="holds no image files"):
    update_index(FakeModel(), photos, index_path)
  with pytest.raises(UserError, match="is not a folder"):
    update_index(FakeModel(), tmp_path / "missing", index_path)
  assert not index_path.exists()


def test_an_index_of_another_model_or_folder_is_refused_with_the_fix(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  random_folder(photos, 3)
  update_index(FakeModel("fake-a"), photos, index_path)
  other = FakeModel("fake-b")
  with pytest.raises(UserError, match="another model") as refused:
    update_index(other, photos, index_path)
  message = str(refused.value)
  assert "fake-a" in message and "fake-b" in message
  assert "--index" in message and "--rebuild_index" in message
  assert other.embedded == 0

  elsewhere = tmp_path / "other_photos"
  random_folder(elsewhere, 1)
  with pytest.raises(UserError, match="is of the images in"):
    update_index(FakeModel("fake-a"), elsewhere, index_path)

  summary = update_index(other, photos, index_path, rebuild=True)
  assert other.embedded == 3 and summary.index.fingerprint == "fake-b"


def test_an_index_is_not_written_among_other_files_but_over_an_unfinished_first_build(tmp_path):
  photos = tmp_path / "photos"
  random_folder(photos, 2)
  before = sorted(os.listdir(photos))
  with pytest.raises(UserError, match="no jclip index"):
    update_index(FakeModel(), photos, photos)  # --index mistyped as the photo folder
  assert sorted(os.listdir(photos)) == before
  # What a first build leaves when it is killed before its first commit is no stranger.
  orphans = tmp_path / "index"
  orphans.mkdir()
  (orphans / "embeddings-000001.npy").write_bytes(b"\x93NUMPY cut short")
  assert update_index(FakeModel(), photos, orphans).index.rows == 2
  assert generation_files(orphans) == ["embeddings-000002.npy", "manifest-000002.jsonl"]


def test_search_by_text_and_by_image_finds_the_planted_match(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  for i in range(8):
    save(tinted_image(i, "red"), photos / f"red{i}.png")
  save(tinted_image(99, "blue"), photos / "the_blue_one.png")
  model = FakeModel()
  index = update_index(model, photos, index_path).index

  rows, scores = top_k_rows(index.embeddings_ND, model.encode_texts("blue")[0], 3)
  assert index.records(rows)[0]["path"] == "the_blue_one.png"
  assert scores[0] > scores[1]

  # A copy of red3 re-saved as a JPEG and shrunk, from outside the folder.
  query = save(tinted_image(3, "red")[:60, :60], tmp_path / "query.jpg", quality=70)
  rows, _ = top_k_rows(index.embeddings_ND, model.encode_images([query])[0], 3)
  assert index.records(rows)[0]["path"] == "red3.png"


def test_chunked_top_k_equals_the_whole_ranking_ties_included():
  rng = np.random.default_rng(0)
  # Small integers: every dot product is exact, and many are equal.
  emb_ND = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
  query_D = rng.integers(-2, 3, size=4).astype(np.float32)
  for k in (1, 5, 17, 50, 80):
    rows, scores = top_k_rows(emb_ND, query_D, k, chunk_rows=7)
    scores_N = emb_ND @ query_D
    expected_rows = np.argsort(-scores_N, kind="stable")[:k]  # the whole ranking, ties by row
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, scores_N[expected_rows])


def test_duplicates_are_re_encoded_copies_and_not_distinct_images(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  for i in range(10):
    save(random_image(i), photos / f"photo{i}.png")
  save(random_image(2), photos / "copies" / "photo2_q40.jpg", quality=40)
  save(random_image(5)[::2, ::2].copy(), photos / "copies" / "photo5_half.png")
  save(np.asarray(Image.fromarray(random_image(7)).resize((90, 90))), photos / "photo7_big.jpg")
  index = update_index(FakeModel(), photos, index_path).index

  def pairs(block_rows):
    found = near_duplicate_pairs(index.embeddings_ND, 0.9, block_rows=block_rows)
    return found, [tuple(r["path"] for r in index.records(pair)) for pair in found.rows_P2]

  whole, whole_paths = pairs(block_rows=index.rows)
  assert sorted(whole_paths) == [
    ("copies/photo2_q40.jpg", "photo2.png"),
    ("copies/photo5_half.png", "photo5.png"),
    ("photo7.png", "photo7_big.jpg"),
  ]
  assert whole.found == 3 and np.all(np.diff(whole.scores_P) <= 0)
  blocked, blocked_paths = pairs(block_rows=4)  # 13 rows in blocks of 4
  assert blocked_paths == whole_paths and blocked.found == 3
  np.testing.assert_allclose(blocked.scores_P, whole.scores_P, atol=1e-6)
  kept = near_duplicate_pairs(index.embeddings_ND, 0.9, block_rows=4, max_pairs=1)
  assert kept.found == 3 and len(kept.scores_P) == 1 and kept.scores_P[0] == whole.scores_P[0]


def test_off_topic_and_outliers_find_the_planted_odd_image(tmp_path):
  photos, index_path = tmp_path / "photos", tmp_path / "index"
  for i in range(9):
    save(tinted_image(i, "red"), photos / f"red{i}.png")
  save(tinted_image(99, "blue"), photos / "odd.png")
  model = FakeModel()
  index = update_index(model, photos, index_path).index
  rows, scores = least_similar_rows(index.embeddings_ND, model.encode_texts("red")[0], 2)
  assert index.records(rows)[0]["path"] == "odd.png" and scores[0] < scores[1]
  direction_D = mean_direction(index.embeddings_ND, chunk_rows=3)  # 10 rows in chunks of 3
  mean_D = np.mean(index.embeddings_ND, axis=0)
  np.testing.assert_allclose(direction_D, mean_D / np.linalg.norm(mean_D), atol=1e-6)
  rows, _ = least_similar_rows(index.embeddings_ND, direction_D, 1)
  assert index.records(rows)[0]["path"] == "odd.png"


def test_html_page_shows_every_image_by_a_path_relative_to_the_page(tmp_path):
  images = [
    save(random_image(i), tmp_path / "photos" / name)
    for i, name in enumerate(["a b.jpg", "c<d>.png"])
  ]
  page = tmp_path / "out" / "page.html"
  page.parent.mkdir()
  write_image_page(
    str(page),
    "Top 2 for 'x & y'",
    [[(str(images[0]), "1. 0.9000\na b.jpg"), (str(images[1]), "2. 0.5000\nc<d>.png")]],
  )
  text = page.read_text()
  assert 'src="../photos/a%20b.jpg"' in text and 'src="../photos/c%3Cd%3E.png"' in text
  assert "Top 2 for &#x27;x &amp; y&#x27;" in text and "1. 0.9000<br>a b.jpg" in text
  assert "c&lt;d&gt;.png" in text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny CLIP trained for 2 steps."""
  from jclip.training import loop

  config = tiny_clip_config()
  config.num_steps, config.optim.warmup_steps, config.best_metric = 2, 1, None
  config.evals = ml_collections.ConfigDict()  # no evaluator: the loop's slowest part here
  workdir = str(tmp_path_factory.mktemp("collection_run"))
  loop.train(config, workdir)
  return workdir


def test_eval_py_indexes_searches_and_cleans_a_folder(workdir, tmp_path):
  photos, out = tmp_path / "photos", tmp_path / "out"
  names = random_folder(photos, 5)
  # The query image is a link to a file elsewhere (a folder of links to a dataset's files).
  os.replace(photos / names[0], tmp_path / "elsewhere.png")
  os.symlink(tmp_path / "elsewhere.png", photos / names[0])
  save(random_image(1), photos / "copy_of_img1.jpg", quality=60)
  (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  args = [
    f"--workdir={workdir}",
    f"--images={photos}",
    "--query_text=a red circle",
    f"--query_image={photos / names[0]}",
    "--duplicates=0.9",
    "--outliers",
    "--top_k=3",
    f"--out_dir={out}",
  ]
  result = run_eval(*args, devices=1)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert any(
    line.startswith("Indexed 6 images of ") and "(6 new, 0 changed, 0 removed; 1 unreadable" in line
    for line in lines
  ), result.stdout
  assert any(line.startswith("  skipped: ") and "broken.jpg" in line for line in lines)
  # The query image is in the folder (through its link): its own file is left out of its hits.
  image_hits = json.loads((out / "collection_image_img0_png.json").read_text())["results"]
  assert len(image_hits) == 3 and str(photos / names[0]) not in [h["path"] for h in image_hits]
  text_hits = json.loads((out / "collection_text_a_red_circle.json").read_text())["results"]
  assert [h["rank"] for h in text_hits] == [1, 2, 3]
  assert all(f"{h['score']:.4f}  " in result.stdout for h in text_hits)
  for name in ("collection_text_a_red_circle", "collection_image_img0_png", "collection_outliers"):
    assert (out / f"{name}.png").stat().st_size > 0
    page = (out / f"{name}.html").read_text()
    hits = json.loads((out / f"{name}.json").read_text())["results"]
    assert all(os.path.basename(hit["path"]) in page for hit in hits)
  pairs = json.loads((out / "collection_duplicates_0.9.json").read_text())
  assert (out / "collection_duplicates_0.9.html").exists() and pairs["threshold"] == 0.9
  index_path = report.default_index_path(workdir, str(photos))
  assert CollectionIndex.open(index_path).rows == 6

  result = run_eval(f"--workdir={workdir}", "--duplicates=0.9", "--split=val", devices=1)
  assert result.returncode == 1
  assert (
    result.stderr.strip() == "error: --duplicates only apply to a folder of images: add --images."
  )


def test_a_missing_query_image_or_empty_folder_is_named_before_the_model_is_loaded(
  tmp_path, monkeypatch
):
  random_folder(tmp_path / "photos", 1)

  def no_load(*args):
    raise AssertionError("the model was loaded")

  monkeypatch.setattr(report, "load", no_load)
  workdir = str(tmp_path / "run")
  request = report.CollectionRequest(
    workdir=workdir, images=str(tmp_path / "photos"), query_image=str(tmp_path / "nope.jpg")
  )
  with pytest.raises(FileNotFoundError, match="nope.jpg"):
    report.run_collection(request)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="holds no image files"):
    report.run_collection(report.CollectionRequest(workdir=workdir, images=str(empty)))
  # "~" is the home folder, as the shell does not expand it inside --images=~/...
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(AssertionError, match="the model was loaded"):
    report.run_collection(report.CollectionRequest(workdir=workdir, images="~/photos"))
