"""Banks of labelled images (jclip/data/labelled.py) from generated files: class folders and tables
read the same bank, and each kind of bad input is a named error or a listed skip. The split of
jclip/evaluation/labelled.py: stratified, seeded, single-image classes left out."""

import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

from jclip.data.labelled import read_labelled_images
from jclip.errors import UserError
from jclip.evaluation.labelled import LabelledOptions, check_bank, stratified_split

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def image_bytes(colour, seed: int, fmt: str = "JPEG", size=(24, 20)) -> bytes:
  """A noisy picture of one colour: every seed gives other pixels, so other file content."""
  rng = np.random.default_rng(seed)
  pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
  return buffer.getvalue()


def write(path, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def class_folders(root, per_class: int = 3) -> str:
  """root/<colour>/<colour><i>.jpg (one PNG in the blue folder)."""
  for c, (name, colour) in enumerate(COLOURS.items()):
    for i in range(per_class):
      fmt = "PNG" if (name, i) == ("blue", 0) else "JPEG"
      write(root / name / f"{name}{i}.{fmt.lower()}", image_bytes(colour, 10 * c + i, fmt))
  return str(root)


def table(path, header, rows, delimiter=",") -> str:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _by_path(bank):
  classes, labels, digests = bank.class_names, bank.labels(), bank.content_digests()
  return {os.path.realpath(p): (classes[labels[i]], digests[i]) for i, p in enumerate(bank.paths)}


@pytest.mark.parametrize("extension, delimiter", [(".csv", ","), (".tsv", "\t")])
def test_class_folders_and_a_table_read_the_same_bank(tmp_path, extension, delimiter):
  root = class_folders(tmp_path / "bank")
  from_folders = read_labelled_images(root)
  # The same images listed in a table beside the folder, with its own column names, a rating.
  rows = [
    [os.path.relpath(p, tmp_path), from_folders.class_names[label], f"{i / 10}"]
    for i, (p, label) in enumerate(zip(from_folders.paths, from_folders.labels(), strict=True))
  ]
  path = table(tmp_path / f"stimuli{extension}", ["file", "category", "rating"], rows, delimiter)
  from_table = read_labelled_images(path, image_column="file", label_column="category")
  assert from_folders.class_names == from_table.class_names == ["blue", "green", "red"]
  assert len(from_folders) == 9 and _by_path(from_folders) == _by_path(from_table)
  assert from_table.metadata[4] == {"rating": "0.4"}  # the columns not read are kept
  assert (from_folders.split, from_table.split) == ("bank", "stimuli")
  example = from_table[0]
  assert example["image"].dtype == np.uint8 and example["image"].shape == (20, 24, 3)
  assert example["label"] == from_table.labels()[0] and from_table.captions(0) == []


def test_a_caption_column_gives_each_image_its_caption(tmp_path):
  write(tmp_path / "a.jpg", image_bytes((1, 2, 3), 0))
  write(tmp_path / "b.jpg", image_bytes((1, 2, 3), 1))
  path = table(
    tmp_path / "t.csv", ["image", "label", "text"], [["a.jpg", "x", "an a"], ["b.jpg", "y", ""]]
  )
  bank = read_labelled_images(path, caption_column="text")
  assert [bank.captions(0), bank.captions(1)] == [["an a"], []]


def test_unreadable_and_stray_files_are_left_out_and_listed(tmp_path, monkeypatch):
  root = class_folders(tmp_path / "bank")
  write(tmp_path / "bank" / "red" / "broken.jpg", b"not an image")
  write(tmp_path / "bank" / "red" / "cut.jpg", image_bytes((9, 9, 9), 99)[:200])
  write(tmp_path / "bank" / "green" / "huge.png", image_bytes((9, 9, 9), 98, "PNG", (60, 60)))
  write(tmp_path / "bank" / "green" / "notes.txt", b"ratings elsewhere")
  write(tmp_path / "bank" / "loose.jpg", image_bytes((9, 9, 9), 97))
  write(tmp_path / "bank" / ".DS_Store", b"")
  # 60 x 60 = 3600 pixels is over twice the limit: a possible decompression bomb.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  bank = read_labelled_images(root)
  assert len(bank) == 9  # the nine good images, nothing else
  why = {os.path.basename(path): reason for path, reason in bank.skipped}
  assert sorted(why) == ["broken.jpg", "cut.jpg", "huge.png", "loose.jpg", "notes.txt"]
  assert "cannot be decoded" in why["broken.jpg"] and "truncated" in why["cut.jpg"]
  assert "decompression bomb" in why["huge.png"]
  assert why["loose.jpg"] == "not in a class folder" and "not an image file" in why["notes.txt"]


@pytest.mark.parametrize(
  "rows, kwargs, message",
  [
    ([["a.jpg", "x"]], dict(label_column="class"), r"no column\(s\) \['class'\] \(--label_column"),
    (
      [["a.jpg", "x"], ["gone.jpg", "y"], ["lost.jpg", "y"]],
      {},
      r"t.csv names 2 file\(s\) that do not exist, first row 3: .*gone.jpg",
    ),
    (
      [["a.jpg", "x"], ["./a.jpg", "y"]],
      {},
      r"t.csv row 3 lists './a.jpg' again \(first at row 2\)",
    ),
    (
      [["a.jpg", "dgo"]],
      dict(class_names=["dog", "cat"]),
      r"row 2: label 'dgo' is not one of the classes \['dog', 'cat'\] \(did you mean 'dog'\?\)",
    ),
    ([["a.jpg", ""]], {}, r"row 2: empty image or label field"),
    ([], {}, r"has a header but no rows"),
  ],
)
def test_bad_tables_are_named_errors(tmp_path, rows, kwargs, message):
  write(tmp_path / "a.jpg", image_bytes((1, 2, 3), 0))
  path = table(tmp_path / "t.csv", ["image", "label"], rows)
  with pytest.raises(UserError, match=message):
    read_labelled_images(path, **kwargs)


def test_an_empty_or_unsorted_folder_and_a_missing_path_are_named_errors(tmp_path):
  os.makedirs(tmp_path / "empty" / "dog")
  with pytest.raises(UserError, match="holds no image files"):
    read_labelled_images(tmp_path / "empty")
  write(tmp_path / "flat" / "a.jpg", image_bytes((1, 2, 3), 0))
  with pytest.raises(UserError, match=r"has no class folders with images: .*/<class>/"):
    read_labelled_images(tmp_path / "flat")
  with pytest.raises(UserError, match="nowhere does not exist"):
    read_labelled_images(tmp_path / "nowhere")
  write(tmp_path / "bad" / "dog" / "a.jpg", b"garbage")
  with pytest.raises(UserError, match=r"None of the 1 images .* can be read"):
    read_labelled_images(tmp_path / "bad")


def test_class_names_set_the_classes_and_their_order(tmp_path):
  bank = read_labelled_images(
    class_folders(tmp_path / "bank"), class_names=["red", "green", "blue", "grey"]
  )
  assert bank.class_names == ["red", "green", "blue", "grey"]
  assert all(
    bank.class_names[label] in p for p, label in zip(bank.paths, bank.labels(), strict=True)
  )


def test_the_split_is_stratified_and_seeded_and_leaves_single_images_out():
  labels_N = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
  train, test = stratified_split(labels_N, 0.3, seed=0)
  # Every image but the last, the single one of class 3, in one of the two parts.
  assert not set(train) & set(test) and sorted([*train, *test]) == list(range(17))
  # Per class: round(0.3 x n) held out, at least one, never all: 3 of 10, 2 of 5 (1.5 rounds up),
  # 1 of 2; the single image of class 3 is in neither part.
  assert np.bincount(labels_N[test], minlength=4).tolist() == [3, 2, 1, 0]
  again, other = stratified_split(labels_N, 0.3, seed=0), stratified_split(labels_N, 0.3, seed=1)
  np.testing.assert_array_equal(again[1], test)
  assert not np.array_equal(other[1], test)


def test_a_bank_that_cannot_be_split_is_refused_before_embedding():
  options = LabelledOptions()
  with pytest.raises(UserError, match="single class"):
    check_bank(["dog"], np.zeros(4, int), options)
  with pytest.raises(UserError, match="Fewer than two classes have two or more images"):
    check_bank(["dog", "cat"], np.array([0, 0, 0, 1]), options)
  with pytest.raises(UserError, match="--probe_neighbors=5 exceeds the 4 images"):
    check_bank(["dog", "cat"], np.array([0, 0, 0, 1, 1, 1]), options)
  with pytest.raises(UserError, match=r"not in class_names: \['cow'\]"):
    check_bank(
      ["dog", "cat"], np.array([0, 0, 1, 1]), LabelledOptions(class_prompts={"cow": ["a cow"]})
    )
  with pytest.raises(UserError, match="--test_fraction=1.0"):
    LabelledOptions(test_fraction=1.0)
