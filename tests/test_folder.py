"""Image-caption folders -> TFDS array_record -> sources; every kind of bad input, from generated
files (the Flickr images are never copied into the repository)."""

import dataclasses
import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_eval
from jclip.config.defaults import base
from jclip.data import folder
from jclip.data.folder import DataError, FolderSource, TableLayout, prepare
from jclip.data.images import EXIF_ORIENTATION

LAYOUT = TableLayout.of(base().data)  # captions.tsv, the Flickr columns
HEADER = "image\tcaption_idx\tcaption\tcategory\tsplit\n"


def _jpeg(colour, mode="RGB", fmt="JPEG"):
  buffer = io.BytesIO()
  Image.new("RGB", (20, 12), colour).convert(mode).save(buffer, format=fmt)
  return buffer.getvalue()


def _make_folder(root, rows=None, images=None, header=HEADER):
  """A folder with 4 images over train/val/test, 2 captions each (written out of order)."""
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  images = (
    images
    if images is not None
    else {
      "a.jpg": _jpeg((255, 0, 0)),
      "b.jpg": _jpeg((0, 255, 0), mode="L"),
      "c.png": _jpeg((0, 0, 255), mode="RGBA", fmt="PNG"),
      "d.jpg": _jpeg((9, 9, 9), mode="CMYK"),
    }
  )
  for name, data in images.items():
    with open(os.path.join(root, "images", name), "wb") as f:
      f.write(data)
  rows = (
    rows
    if rows is not None
    else [
      "a.jpg\t1\tthe second caption of a\tdog\ttrain",
      "a.jpg\t0\ta red \"dog\" photo\tdog\ttrain",
      "b.jpg\t0\ta grey ball\tball\ttrain",
      "b.jpg\t1\tanother ball\tball\ttrain",
      "c.png\t0\ta blue dog\tdog\tval",
      "c.png\t1\tblue\tdog\tval",
      "d.jpg\t0\tdark ball\tball\ttest",
      "d.jpg\t1\tvery dark\tball\ttest",
    ]
  )
  with open(os.path.join(root, "captions.tsv"), "wb") as f:
    f.write(header.encode() if isinstance(header, str) else header)
    for row in rows:
      f.write((row.encode() if isinstance(row, str) else row) + b"\n")
  return str(root)


def test_builds_every_split_with_ordered_captions_labels_and_rgb_images(tmp_path):
  builder = prepare(_make_folder(tmp_path / "data"), str(tmp_path / "tfds"), LAYOUT)
  assert sorted(builder.info.splits) == ["test", "train", "val"]
  train = FolderSource(builder, "train")
  assert len(train) == 2 and train.class_names == ["ball", "dog"]
  examples = {tuple(train.captions(i)): train[i] for i in range(len(train))}
  a = examples[("a red \"dog\" photo", "the second caption of a")]  # caption_idx order, quotes kept
  assert a["label"] == 1 and a["image"].shape == (12, 20, 3)
  np.testing.assert_allclose(a["image"].reshape(-1, 3).mean(0), [255, 0, 0], atol=8)
  for split in ("val", "test"):  # RGBA PNG and CMYK JPEG come back as RGB
    source = FolderSource(builder, split)
    assert source[0]["image"].shape == (12, 20, 3)
  np.testing.assert_array_equal(
    FolderSource(builder, "train").labels(), [train[0]["label"], train[1]["label"]]
  )


def _as_pairs_csv(root, header="file,text,part,kind\n"):
  """The captions of _make_folder's folder as pairs.csv: other column names, comma-separated and
  quoted (a caption holds a comma and quotes), no caption index column (the rows' order, here
  not the alphabetical one)."""
  rows = [
    'a.jpg,"the first caption of a, with a comma",train,dog',
    'a.jpg,"a red ""dog"" photo",train,dog',
    "b.jpg,a grey ball,train,ball",
    "c.png,a blue dog,val,dog",
  ]
  with open(os.path.join(root, "pairs.csv"), "w") as f:
    f.write(header + "\n".join(rows) + "\n")
  return TableLayout("pairs.csv", "file", "text", "caption_idx", "part", "kind")


def test_a_csv_with_its_own_column_names_gives_the_captions_in_row_order_and_the_labels(tmp_path):
  root = _make_folder(tmp_path / "data")
  builder = prepare(root, str(tmp_path / "tfds"), _as_pairs_csv(root))
  assert sorted(builder.info.splits) == ["train", "val"]
  train = FolderSource(builder, "train")
  assert train.class_names == ["ball", "dog"]
  by_captions = {tuple(train.captions(i)): int(train.labels()[i]) for i in range(len(train))}
  assert by_captions == {
    ("the first caption of a, with a comma", 'a red "dog" photo'): 1,
    ("a grey ball",): 0,
  }


def test_a_csv_missing_a_column_names_the_setting_to_change(tmp_path):
  root = _make_folder(tmp_path / "data")
  layout = _as_pairs_csv(root, header="file,caption,part,kind\n")
  with pytest.raises(
    DataError, match=r"pairs.csv row 1: .* no column\(s\) \['text'\] \(--config.data.caption_column"
  ):
    prepare(root, str(tmp_path / "tfds"), layout)


def test_reading_another_column_rebuilds_the_dataset(tmp_path):
  root = _make_folder(
    tmp_path / "data",
    header="image\tcaption_idx\tcaption\tshort\tsplit\n",
    rows=["a.jpg\t0\ta long caption of a\tlong a\ttrain"],
    images={"a.jpg": _jpeg((1, 2, 3))},
  )
  first = prepare(root, str(tmp_path / "tfds"), LAYOUT)
  second = prepare(
    root, str(tmp_path / "tfds"), dataclasses.replace(LAYOUT, caption_column="short")
  )
  assert first.data_dir != second.data_dir
  assert FolderSource(first, "train").captions(0) == ["a long caption of a"]
  assert FolderSource(second, "train").captions(0) == ["long a"]


def test_unknown_split_lists_the_available_ones(tmp_path):
  builder = prepare(_make_folder(tmp_path / "data"), str(tmp_path / "tfds"), LAYOUT)
  with pytest.raises(DataError, match=r"'dev'.*\['test', 'train', 'val'\]"):
    FolderSource(builder, "dev")


def test_rebuilds_when_the_captions_change(tmp_path):
  root = _make_folder(tmp_path / "data")
  first = prepare(root, str(tmp_path / "tfds"), LAYOUT)
  _make_folder(tmp_path / "data", rows=["a.jpg\t0\tonly one\tdog\ttrain"])
  second = prepare(root, str(tmp_path / "tfds"), LAYOUT)
  assert first.data_dir != second.data_dir
  assert FolderSource(second, "train").captions(0) == ["only one"]


def test_folder_without_category_has_no_labels(tmp_path):
  root = _make_folder(
    tmp_path / "data",
    header="image\tcaption_idx\tcaption\tsplit\n",
    rows=["a.jpg\t0\ta caption\ttrain"],
    images={"a.jpg": _jpeg((1, 2, 3))},
  )
  source = FolderSource(prepare(root, str(tmp_path / "tfds"), LAYOUT), "train")
  assert source.class_names is None and "label" not in source[0]
  with pytest.raises(DataError, match="no class labels"):
    source.labels()


@pytest.mark.parametrize(
  "rows, images, header, message",
  [
    (
      None,
      None,
      "image\tcaption_idx\tcaption\n",
      r"row 1: the header .* has no column\(s\) \['split'\] \(--config.data.split_column='split'\)",
    ),
    (["a.jpg\t0\t\tdog\ttrain"], None, HEADER, r"row 2: the caption of 'a.jpg' is empty"),
    (
      ["a.jpg\t0\tok\tdog\ttrain", b"b.jpg\t0\tcaf\xe9\tball\ttrain"],
      None,
      HEADER,
      r"row 3: byte b'\\xe9' at column 12 is not UTF-8",
    ),
    (["a.jpg\t0\ttoo\tmany\tdog\ttrain"], None, HEADER, r"row 2: 6 tab-separated fields"),
    (["a.jpg\tx\tcap\tdog\ttrain"], None, HEADER, r"row 2: caption_idx 'x' is not an integer"),
    (
      ["a.jpg\t0\tcap\tdog\ttrain", "a.jpg\t1\tcap\tdog\tval"],
      None,
      HEADER,
      r"row 3: 'a.jpg' was listed earlier with split 'train'",
    ),
    (["zzz.jpg\t0\tcap\tdog\ttrain"], None, HEADER, r"images/zzz.jpg is listed .* does not exist"),
    (
      ["a.jpg\t0\tcap\tdog\ttrain"],
      {"a.jpg": b"not an image at all"},
      HEADER,
      r"images/a.jpg cannot be decoded",
    ),
    (
      ["a.jpg\t0\tcap\tdog\ttrain"],
      {"a.jpg": _jpeg((5, 5, 5))[:200]},
      HEADER,
      r"images/a.jpg cannot be decoded .*truncated",
    ),
    ([], None, HEADER, r"has a header but no captions"),
    (
      ["../../x.jpg\t0\tcap\tdog\ttrain"],
      None,
      HEADER,
      r"row 2: image '../../x.jpg' points outside images/: name each image by its path inside",
    ),
    (
      ["a.jpg\t0\tcap\tdog\ttrain", "/etc/x.jpg\t0\tcap\tdog\ttrain"],
      None,
      HEADER,
      r"row 3: image '/etc/x.jpg' points outside images/",
    ),
  ],
)
def test_bad_input_names_file_row_and_fix(tmp_path, rows, images, header, message):
  root = _make_folder(tmp_path / "data", rows=rows, images=images, header=header)
  with pytest.raises(DataError, match=message):
    prepare(root, str(tmp_path / "tfds"), LAYOUT)
  # A failed build leaves nothing behind: no dataset a later run could mistake for a complete
  # one, no empty folders.
  assert not (tmp_path / "tfds").exists()


def test_failed_build_keeps_what_the_data_dir_held(tmp_path):
  tfds_dir = str(tmp_path / "tfds")
  prepare(_make_folder(tmp_path / "good"), tfds_dir, LAYOUT)
  before = sorted(str(p) for p in (tmp_path / "tfds").rglob("*"))
  bad = _make_folder(
    tmp_path / "bad", rows=["a.jpg\t0\tcap\tdog\ttrain"], images={"a.jpg": b"not an image"}
  )
  with pytest.raises(DataError, match="cannot be decoded"):
    prepare(bad, tfds_dir, LAYOUT)
  assert sorted(str(p) for p in (tmp_path / "tfds").rglob("*")) == before


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 20 x 12 = 240 pixels: over twice that
  root = _make_folder(tmp_path / "data", rows=["a.jpg\t0\tcap\tdog\ttrain"])
  with pytest.raises(
    DataError,
    match=r"images/a.jpg is refused as a possible decompression bomb: "
    r"Image size \(240 pixels\) exceeds",
  ):
    prepare(root, str(tmp_path / "tfds"), LAYOUT)


def _sideways_jpeg():
  """A 20 x 12 JPEG, red on the left, blue on the right, tagged 'rotate 90 degrees clockwise to
  view' (EXIF orientation 6), as phones store portrait photos: upright it is 12 wide, red on top."""
  image = Image.new("RGB", (20, 12), (0, 0, 255))
  image.paste((255, 0, 0), (0, 0, 10, 12))
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", exif=exif, quality=95)
  return buffer.getvalue()


def _assert_red_on_top(image_HW3):
  np.testing.assert_allclose(image_HW3[0].mean(0), [255, 0, 0], atol=30)
  np.testing.assert_allclose(image_HW3[-1].mean(0), [0, 0, 255], atol=30)


def test_exif_orientation_is_applied_in_the_dataset_and_the_query_loader(tmp_path):
  from jclip.data.images import open_image, resize_and_center_crop

  root = _make_folder(
    tmp_path / "data", rows=["a.jpg\t0\tcap\tdog\ttrain"], images={"a.jpg": _sideways_jpeg()}
  )
  stored = FolderSource(prepare(root, str(tmp_path / "tfds"), LAYOUT), "train")[0]["image"]
  assert stored.shape == (20, 12, 3)
  _assert_red_on_top(stored)
  # eval.py's --query_image loader: upright 12 x 20, centre-cropped to 12 x 12.
  _assert_red_on_top(resize_and_center_crop(open_image(os.path.join(root, "images", "a.jpg")), 12))


def test_rebuilds_when_an_image_file_is_replaced(tmp_path):
  root = _make_folder(tmp_path / "data")
  first = prepare(root, str(tmp_path / "tfds"), LAYOUT)
  path = os.path.join(root, "images", "a.jpg")
  with open(path, "wb") as f:  # same name, same captions, another picture
    f.write(_jpeg((0, 0, 255)))
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  second = prepare(root, str(tmp_path / "tfds"), LAYOUT)
  assert first.data_dir != second.data_dir
  train = FolderSource(second, "train")
  image = next(train[i]["image"] for i in range(len(train)) if "a red" in train.captions(i)[0])
  np.testing.assert_allclose(image.reshape(-1, 3).mean(0), [0, 0, 255], atol=8)


def test_missing_folder_and_captions_file(tmp_path):
  with pytest.raises(DataError, match="does not exist: pass the folder"):
    prepare(str(tmp_path / "nowhere"), str(tmp_path / "tfds"), LAYOUT)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(DataError, match="captions.tsv is missing"):
    prepare(str(tmp_path / "empty"), str(tmp_path / "tfds"), LAYOUT)


def test_shared_flickr_folders_have_the_documented_splits(shared_data, tmp_path):
  four = prepare(os.path.join(shared_data, "flickr8k_4cat"), str(tmp_path), LAYOUT)
  train, val = FolderSource(four, "train"), FolderSource(four, "val")
  assert (len(train), len(val)) == (480, 120)
  assert train.class_names == ["ball", "bike", "dog", "water"]
  assert np.bincount(val.labels()).tolist() == [30, 30, 30, 30]
  example = train[0]
  assert example["image"].shape == (160, 160, 3) and len(example["captions"]) == 5
  assert folder.read_caption_table(os.path.join(shared_data, "flickr8k"), LAYOUT).splits == [
    "train",
    "unassigned",
    "val",
  ]


def test_train_on_a_folder_then_evaluate_its_test_split_from_another_location(tmp_path):
  """The user's path: train on a folder, then `eval.py --split=test --data_root=<folder>` (here a
  copy elsewhere, as on another machine) writes test_retrieval.json."""
  import json
  import shutil

  from conftest import tiny_clip_config
  from jclip.training import loop

  config = tiny_clip_config()
  config.num_steps, config.checkpoint_every, config.optim.warmup_steps = 2, 2, 1
  config.data.name = "folder"
  config.data.root = _make_folder(tmp_path / "data")
  config.data.tfds_dir = str(tmp_path / "tfds")
  config.data.crop_scale_min, config.data.flip = 0.5, True
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)

  moved = shutil.copytree(tmp_path / "data", tmp_path / "elsewhere")
  result = run_eval(f"--workdir={workdir}", "--split=test", f"--data_root={moved}", devices=1)
  assert result.returncode == 0, result.stderr
  assert "test retrieval (1 images, 2 captions)" in result.stdout
  with open(os.path.join(workdir, "eval", "test_retrieval.json")) as f:
    metrics = json.load(f)
  assert metrics["i2t_r1"] == metrics["t2i_r1"] == 1.0  # one image: every query is a hit
