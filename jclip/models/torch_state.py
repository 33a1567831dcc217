"""PyTorch state-dict files (.pt, .pth) read with numpy alone: no PyTorch, no code from the file.

`torch.save(model.state_dict(), path)` pickles an OrderedDict name -> tensor, and unpickling calls
whatever the pickle names: `pickle.load` on a stranger's file runs the stranger's code. Here the
unpickler's `find_class` admits only the names a plain state dict uses, each mapped to a harmless
stand-in of this module's own; any other name is refused before anything is called:

    collections.OrderedDict            the dict itself (and its `_metadata`)
    torch.FloatStorage, ...            a storage's element type -> a numpy dtype
    torch._utils._rebuild_tensor_v2    (storage, offset, size, stride, ...) -> a tensor reference
    torch._utils._rebuild_parameter    an nn.Parameter (state_dict(keep_vars=True)) -> its tensor

A tensor is a view into a flat storage: element [i, j, ...] sits at storage[offset + i * stride[0]
+ j * stride[1] + ...], and views of one storage (slices, transposes) share it. The pickle holds no
storage bytes, only persistent ids ('storage', type, key, location, numel) naming them; where the
bytes lie depends on the format:

  legacy (torch < 1.6, or _use_new_zipfile_serialization=False): pickles one after another (the
      magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a dict about the writer's
      machine, the state dict, the list of storage keys), then each storage in that list's order:
      an int64 element count, then count * itemsize raw little-endian bytes.
  zip (current PyTorch): an archive with one top folder holding data.pkl (the state dict),
      data/<key> (each storage's raw bytes), byteorder ("little") and version.

Storages are read only once the pickle proved to be a dict name -> tensor, and each view is checked
to lie inside its storage before numpy's as_strided (which checks nothing) reads it.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import NamedTuple

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {  # torch.<name> -> its elements, as PyTorch writes them (little-endian)
  "FloatStorage": np.dtype("<f4"),
  "DoubleStorage": np.dtype("<f8"),
  "HalfStorage": np.dtype("<f2"),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype("<i8"),
  "IntStorage": np.dtype("<i4"),
  "ShortStorage": np.dtype("<i2"),
  "CharStorage": np.dtype("i1"),
  "ByteStorage": np.dtype("u1"),
  "BoolStorage": np.dtype("?"),
}
_REBUILDERS = ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter")
# The most elements a tensor or a storage may hold (4 GiB of float32). The weights jclip reads are
# far below it (BERT-large's word embeddings: 31M); past it, a file is crafted or not a model's,
# and is refused before anything is allocated.
MAX_ELEMENTS = 1 << 30
_PLAIN = "only plain state dicts are read (torch.save(model.state_dict(), path))"


class StateDictError(ValueError):
  """Not a readable PyTorch state dict; the message names the file and the problem."""


# The unpickler's products. Named tuples have no __dict__: a pickle's BUILD opcode cannot change
# them once checked.
class _StorageType(NamedTuple):
  dtype: np.dtype


class _Storage(NamedTuple):
  key: str  # its name on disk
  dtype: np.dtype
  numel: int  # its length in elements
  view: tuple[int, int] | None  # legacy storage views (torch < 0.4): (offset, numel) within it


class _Tensor(NamedTuple):
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _is_count(value) -> bool:
  return type(value) is int and value >= 0  # type(), not isinstance(): no bools


class _Unpickler(pickle.Unpickler):
  """Unpickles a state dict into _Tensor references, refusing every other global."""

  def __init__(self, file, path: str):
    super().__init__(file)
    self.path = path
    self.storages: dict[str, _Storage] = {}  # every storage the pickle names, by key

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict  # a C type: BUILD cannot set its attributes
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(STORAGE_DTYPES[name])
    if module == "torch._utils" and name in _REBUILDERS:
      return getattr(self, name)  # bound methods: a pickle cannot set attributes on them
    raise StateDictError(f"{self.path}: refused to load the global {module}.{name}: {_PLAIN}")

  def persistent_load(self, pid):
    if not (
      isinstance(pid, tuple)
      and len(pid) in (5, 6)
      and pid[0] == "storage"
      and isinstance(pid[1], _StorageType)
      and isinstance(pid[2], str)
      and _is_count(pid[4])
    ):
      raise StateDictError(f"{self.path}: unexpected persistent id {pid!r}")
    view = pid[5] if len(pid) == 6 else None  # (view key, offset, numel) within storage pid[2]
    if view is not None and not (
      isinstance(view, tuple) and len(view) == 3 and _is_count(view[1]) and _is_count(view[2])
    ):
      raise StateDictError(f"{self.path}: bad storage view {view!r}")
    storage = self.storages.setdefault(pid[2], _Storage(pid[2], pid[1].dtype, pid[4], None))
    if (storage.dtype, storage.numel) != (pid[1].dtype, pid[4]):
      raise StateDictError(f"{self.path}: storage {pid[2]} is named with two types or lengths")
    return storage if view is None else storage._replace(view=view[1:])

  def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad, hooks, metadata=None):
    del requires_grad, hooks  # autograd's business, not the values'
    if not (metadata is None or isinstance(metadata, dict) and not any(metadata.values())):
      # {"neg": True}: the values are stored negated ({"conj": True}: complex conjugated)
      raise StateDictError(f"{self.path}: a tensor with flags {metadata}; save t.resolve_neg()")
    return self._rebuild_tensor(storage, offset, size, stride)

  def _rebuild_tensor(self, storage, offset, size, stride):
    if not (
      isinstance(storage, _Storage)
      and _is_count(offset)
      and isinstance(size, tuple)
      and isinstance(stride, tuple)
      and len(size) == len(stride)
      and all(map(_is_count, size + stride))
    ):
      raise StateDictError(f"{self.path}: bad tensor {(storage, offset, size, stride)!r}")
    return _Tensor(storage, offset, size, stride)

  def _rebuild_parameter(self, data, requires_grad, hooks):
    del requires_grad, hooks
    if not isinstance(data, _Tensor):
      raise StateDictError(f"{self.path}: a parameter of {type(data).__name__}, not a tensor")
    return data


def _unpickle(file, path: str, problem: str = "is truncated or damaged"):
  """One pickle from `file`, and the unpickler (which knows the storages it named)."""
  unpickler = _Unpickler(file, path)
  try:
    return unpickler.load(), unpickler
  except StateDictError:
    raise
  # What bad bytes make pickle raise (MemoryError: a length field of 2**60 bytes, say).
  except (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    MemoryError,
  ) as error:
    raise StateDictError(f"{path} {problem} ({type(error).__name__}: {error})") from error


def _check_state_dict(obj, path: str) -> None:
  """Passes a dict name -> tensor; for anything else, says what the file holds instead."""
  if not isinstance(obj, dict):
    raise StateDictError(
      f"{path} holds a {type(obj).__name__}, not a dict name -> tensor; {_PLAIN}"
    )
  for name, value in obj.items():
    if not (isinstance(name, str) and isinstance(value, _Tensor)):
      inner = [
        key
        for key, entry in obj.items()
        if isinstance(entry, dict) and entry and all(isinstance(v, _Tensor) for v in entry.values())
      ]  # a checkpoint's model?
      hint = (
        f"; the dict under {inner[0]!r} looks like a state dict: save it alone, "
        f"torch.save(checkpoint[{inner[0]!r}], path)"
        if inner
        else ""
      )
      found = (
        f"entry {name!r} is of type {type(value).__name__}, not a tensor"
        if isinstance(name, str)
        else f"the key {name!r} is not a name"
      )
      raise StateDictError(f"{path}: {found}{hint}; {_PLAIN}")


def _check_sizes(state: dict, storages: dict[str, _Storage], path: str) -> None:
  """Refuses, before any storage is read or any tensor allocated, a storage or a tensor of more than
  MAX_ELEMENTS, and a tensor with more elements than its storage holds: a stride-0 view (what
  `t.expand(n)` saves) would otherwise be copied out into n elements."""
  for storage in storages.values():
    if storage.numel > MAX_ELEMENTS:
      raise StateDictError(
        f"{path}: storage {storage.key} claims {storage.numel:,} elements, more than the "
        f"{MAX_ELEMENTS:,} a weight tensor may hold here"
      )
  for name, tensor in state.items():
    numel = int(np.prod(tensor.size, dtype=object))
    available = tensor.storage.view[1] if tensor.storage.view else tensor.storage.numel
    if numel > min(available, MAX_ELEMENTS):
      raise StateDictError(
        f"{path}: tensor {name!r} of size {tensor.size} has {numel:,} elements but its storage "
        f"{tensor.storage.key} holds {available:,} (at most {MAX_ELEMENTS:,} are read): it "
        "reaches past its storage, or repeats elements as an expanded (stride-0) view does, "
        "which no model's weights do; save each tensor with t.contiguous()"
      )


def _to_numpy(tensor: _Tensor, flat: np.ndarray, path: str) -> np.ndarray:
  """The tensor's elements, read from its storage's flat array into a contiguous copy."""
  if tensor.storage.view is not None:  # a legacy storage view: a window into `flat`
    start, numel = tensor.storage.view
    if start + numel > flat.size:
      raise StateDictError(f"{path}: a view of storage {tensor.storage.key} lies outside it")
    flat = flat[start : start + numel]
  if 0 in tensor.size:
    return np.zeros(tensor.size, flat.dtype)
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True))
  if last >= flat.size:
    raise StateDictError(
      f"{path}: a tensor of size {tensor.size}, stride {tensor.stride} at "
      f"offset {tensor.offset} reaches past its storage {tensor.storage.key} "
      f"({flat.size} elements)"
    )
  strides = [s * flat.itemsize for s in tensor.stride]
  return np.lib.stride_tricks.as_strided(flat[tensor.offset :], tensor.size, strides).copy()


def _read_legacy(file, path: str) -> tuple[dict, dict[str, np.ndarray]]:
  magic, _ = _unpickle(file, path, "is not a PyTorch state dict file")
  if magic != LEGACY_MAGIC:
    raise StateDictError(f"{path} is not a PyTorch state dict file (wrong magic number)")
  protocol, _ = _unpickle(file, path)
  info, _ = _unpickle(file, path)
  if protocol != LEGACY_PROTOCOL or not isinstance(info, dict) or not info.get("little_endian"):
    raise StateDictError(f"{path}: unsupported legacy header ({protocol!r}, {info!r})")
  state, unpickler = _unpickle(file, path)
  _check_state_dict(state, path)
  _check_sizes(state, unpickler.storages, path)
  keys, _ = _unpickle(file, path)
  if not (
    isinstance(keys, list)
    and all(isinstance(key, str) for key in keys)
    and sorted(keys) == sorted(unpickler.storages)
  ):
    raise StateDictError(f"{path}: its list of storages is not the tensors' storages")
  flats = {}
  for key in keys:
    storage = unpickler.storages[key]
    count, nbytes = file.read(8), storage.numel * storage.dtype.itemsize
    if len(count) < 8 or int.from_bytes(count, "little", signed=True) != storage.numel:
      raise StateDictError(
        f"{path} is truncated or damaged: the count before storage {key} is "
        f"not its {storage.numel} elements"
      )
    # A short file is named without reading (or allocating) the bytes its header claims.
    left = os.fstat(file.fileno()).st_size - file.tell()
    data = file.read(nbytes) if nbytes <= left else b""
    if len(data) != nbytes:
      raise StateDictError(
        f"{path} is truncated: storage {key} has {len(data)} of its {nbytes} bytes"
      )
    flats[key] = np.frombuffer(data, storage.dtype)
  return state, flats


def _read_zip(file, path: str) -> tuple[dict, dict[str, np.ndarray]]:
  with zipfile.ZipFile(file) as archive:
    names = set(archive.namelist())
    folders = {name.partition("/")[0] for name in names}
    folder = folders.pop() if len(folders) == 1 else None
    if f"{folder}/data.pkl" not in names:
      raise StateDictError(f"{path} is a zip but not a PyTorch state dict (no <folder>/data.pkl)")
    order = archive.read(f"{folder}/byteorder") if f"{folder}/byteorder" in names else b"little"
    if order != b"little":
      raise StateDictError(f"{path}: byte order {order!r}; only little-endian files are read")
    with archive.open(f"{folder}/data.pkl") as pickled:
      state, unpickler = _unpickle(pickled, path)
    _check_state_dict(state, path)
    _check_sizes(state, unpickler.storages, path)
    flats = {}
    for key, storage in unpickler.storages.items():
      name, nbytes = f"{folder}/data/{key}", storage.numel * storage.dtype.itemsize
      if name not in names or archive.getinfo(name).file_size != nbytes:
        raise StateDictError(
          f"{path}: {name} is missing or not the {nbytes} bytes of its {storage.numel} elements"
        )
      flats[key] = np.frombuffer(archive.read(name), storage.dtype)
  return state, flats


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a file written by torch.save(model.state_dict(), path), in either format: the legacy
  one (torch < 1.6, or _use_new_zipfile_serialization=False: a sequence of pickles followed by raw
  storage bytes) and the zip one (current PyTorch: archive/data.pkl + archive/data/<key>). Returns a
  flat dict name -> numpy array (contiguous copies, the tensor's dtype; bfloat16 via ml_dtypes)."""
  path = os.fspath(path)
  with open(path, "rb") as file:
    is_zip = file.read(4) == b"PK\x03\x04"  # a zip's first entry
    file.seek(0)
    try:
      state, flats = (_read_zip if is_zip else _read_legacy)(file, path)
    except zipfile.BadZipFile as error:  # a cut archive, or a bad CRC found while reading
      raise StateDictError(f"{path} is a truncated or damaged zip ({error})") from error
  return {
    name: _to_numpy(tensor, flats[tensor.storage.key], path) for name, tensor in state.items()
  }
