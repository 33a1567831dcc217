"""Which of the evaluated images a run saw in training: the same file content as an image of its
training split.

A model scored on images it trained on measures memory as well as generalisation: the Flickr8k LiT
run scored 0.917 zero-shot on flickr8k_4cat's val split, 109 of whose 120 images are Flickr8k
training images. Images are compared by jclip.data.images.content_digest (the sha256 of the bytes
a folder dataset stores), the training split's read from its records without decoding; a copy of
a file under another name is found, a re-encoded or resized copy is not.

    seen = find_seen_in_training(source, config.data)   # None: the run was not trained on a folder
    if seen.indices: print(seen.warning("val"))
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jclip.data.sources import make_source
from jclip.errors import UserError


@dataclasses.dataclass(frozen=True)
class SeenInTraining:
  training_split: str  # what was compared with: "the train split of <root>"
  num_training: int  # images in it
  num_evaluated: int
  indices: list[int]  # the evaluated images that are in it

  def warning(self, what: str) -> str:
    """One line for `what` (the evaluated images' name) when some were seen."""
    return (
      f"warning: {len(self.indices)} of the {self.num_evaluated} {what} images were seen in "
      f"training (the same file as an image of {self.training_split}): figures on them measure "
      "memory as well as generalisation."
    )

  def to_json(self) -> dict:
    return {
      "compared_with": self.training_split,
      "num_training_images": self.num_training,
      "num_evaluated": self.num_evaluated,
      "num_seen": len(self.indices),
      "seen": self.indices,
    }


def find_seen_in_training(source, data: ml_collections.ConfigDict) -> SeenInTraining | None:
  """The images of `source` (which has `content_digests()`) that are in the training split of a
  run whose config.data is `data`. None, with a line saying why, when that cannot be checked: the
  run was trained on generated data (not a folder), or its folder is not on this machine."""
  if data.name != "folder":
    return None  # the synthetic shapes are drawn afresh for each split
  try:
    training = make_source(data, "train")
  except UserError as e:
    print(f"Not checked whether these images were seen in training: {e}")
    return None
  seen_digests = set(training.content_digests())
  digests = source.content_digests()
  return SeenInTraining(
    f"the train split of {data.root}",
    len(training),
    len(digests),
    [index for index, digest in enumerate(digests) if digest in seen_digests],
  )
