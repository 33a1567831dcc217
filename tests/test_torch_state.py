"""PyTorch state-dict files without PyTorch: files that PyTorch wrote (tests/fixtures/torch_state,
from scripts/make_torch_state_fixtures.py) read to PyTorch's own arrays in both formats, and every
other file refused with the file's name, exploits included, without running them."""

import os
import pickle
import shlex
import zipfile

import numpy as np
import pytest

from jclip.models.torch_state import LEGACY_MAGIC, MAX_ELEMENTS, StateDictError, load_state_dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torch_state")
FORMATS = ["legacy", "zip"]


def _fixture(fmt: str) -> str:
  return os.path.join(FIXTURES, f"state_{fmt}.pth")


def _ops(value) -> bytes:
  """The protocol-2 opcodes that push `value` (no PROTO, no STOP), for handmade pickles."""
  return pickle.dumps(value, protocol=2)[2:-1]


def _legacy_file(path, pickled_state: bytes, storages=None, counts=None):
  """A legacy-format file: the header's pickles, the state's, the storage keys', then each float32
  storage after its element count (`counts` overrides those)."""
  storages, counts = storages or {}, counts or {}
  header = [LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}]
  with open(path, "wb") as f:
    f.write(
      b"".join(pickle.dumps(x, protocol=2) for x in header)
      + pickled_state
      + pickle.dumps(list(storages), protocol=2)
    )
    for key, data in storages.items():
      f.write(counts.get(key, len(data) // 4).to_bytes(8, "little") + data)
  return path


def _zip_file(path, pickled_state: bytes, storages=None, byteorder=b"little"):
  """A zip-format file: archive/data.pkl, archive/byteorder, archive/data/<key>."""
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickled_state)
    archive.writestr("archive/byteorder", byteorder)
    for key, data in (storages or {}).items():
      archive.writestr(f"archive/data/{key}", data)
  return path


def _one_tensor(offset, size, stride, numel=6, metadata=None, view=None) -> bytes:
  """The pickle torch.save({"w": t}) writes for a float32 tensor over storage "0" of `numel`
  (legacy storage views: `view` is (view key, offset, numel) within it)."""
  storage = (
    b"("
    + _ops("storage")
    + b"ctorch\nFloatStorage\n"
    + _ops("0")
    + _ops("cpu")
    + _ops(numel)
    + (_ops(view) if view else b"")
    + b"tQ"
  )  # MARK ... TUPLE, BINPERSID
  args = (
    storage
    + _ops(offset)
    + _ops(size)
    + _ops(stride)
    + b"\x89"  # requires_grad=False
    + b"ccollections\nOrderedDict\n)R"
    + (_ops(metadata) if metadata else b"")
  )
  return b"\x80\x02}" + _ops("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tRs."


def _storage_0(numel=6):
  return {"0": np.arange(numel, dtype="<f4").tobytes()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_pytorchs_files_read_to_pytorchs_arrays(fmt):
  with np.load(os.path.join(FIXTURES, "expected.npz")) as npz:
    dtypes = dict(entry.split(":") for entry in npz["_dtypes"])
    expected = {name: npz[name] for name in dtypes}
  state = load_state_dict(_fixture(fmt))
  assert list(state) == list(expected)  # every tensor, in the file's order
  for name, array in state.items():
    assert str(array.dtype) == dtypes[name], name
    assert array.shape == expected[name].shape, name
    assert array.flags.c_contiguous and array.flags.writeable, name
    # bfloat16 is widened to float32 in the npz, exactly; every other dtype is compared as is.
    np.testing.assert_array_equal(array.astype(expected[name].dtype), expected[name], err_msg=name)
  assert {"bfloat16", "float16", "int64", "bool"} <= set(dtypes.values())
  assert state["0.weight"].ndim == 4  # the conv layer's


def test_strides_and_offsets_of_a_handmade_tensor(tmp_path):
  # Storage [0, 1, 2, 3, 4, 5]; offset 1, stride (1, 2): [[1, 3], [2, 4]], a transposed view.
  path = _zip_file(tmp_path / "view.pt", _one_tensor(1, (2, 2), (1, 2)), _storage_0())
  np.testing.assert_array_equal(load_state_dict(path)["w"], [[1, 3], [2, 4]])
  path = _zip_file(tmp_path / "scalar.pt", _one_tensor(5, (), ()), _storage_0())
  assert load_state_dict(path)["w"] == np.float32(5)


def test_legacy_storage_views(tmp_path):
  # Storage view [2, 3, 4] of [0, 1, 2, 3, 4, 5] (torch < 0.4); the tensor starts at its element 1.
  path = _legacy_file(
    tmp_path / "view.pt", _one_tensor(1, (2,), (1,), view=("v", 2, 3)), _storage_0()
  )
  np.testing.assert_array_equal(load_state_dict(path)["w"], [3, 4])
  path = _legacy_file(
    tmp_path / "past.pt", _one_tensor(0, (1,), (1,), view=("v", 4, 3)), _storage_0()
  )
  with pytest.raises(StateDictError, match="lies outside"):
    load_state_dict(path)


@pytest.mark.parametrize(
  "offset,size,stride",
  [
    (0, (2, 2), (1, 5)),  # the last element at 0 + 1 + 5 = 6: one past the end
    (6, (), ()),  # a scalar just past the end
    (4, (3,), (1,)),
    (0, (7,), (1,)),
  ],
)
def test_views_past_their_storage_are_refused(tmp_path, offset, size, stride):
  path = _zip_file(tmp_path / "bad_view.pt", _one_tensor(offset, size, stride), _storage_0())
  with pytest.raises(StateDictError, match="reaches past its storage") as error:
    load_state_dict(path)
  assert str(path) in str(error.value)


def test_negated_views_are_refused(tmp_path):
  path = _zip_file(
    tmp_path / "neg.pt", _one_tensor(0, (6,), (1,), metadata={"neg": True}), _storage_0()
  )
  with pytest.raises(StateDictError, match="neg"):
    load_state_dict(path)


class _Exploit:
  def __init__(self, sentinel):
    self.sentinel = sentinel

  def __reduce__(self):
    return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


def _eval_payload(sentinel) -> bytes:
  """builtins.eval("open(sentinel, 'w')") in raw protocol-2 opcodes."""
  return b"\x80\x02cbuiltins\neval\n" + _ops(f"open({str(sentinel)!r}, 'w')") + b"\x85R."


PAYLOADS = {  # name -> (payload maker, the global it calls)
  "os.system": (
    lambda sentinel: pickle.dumps(_Exploit(sentinel), protocol=2),
    f"{os.system.__module__}.system",
  ),
  "builtins.eval": (_eval_payload, "builtins.eval"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_exploits_work_on_plain_pickle(tmp_path, payload):
  """The control: what the next test refuses would have run."""
  sentinel = tmp_path / "pwned"
  pickle.loads(PAYLOADS[payload][0](sentinel))
  assert sentinel.exists()


@pytest.mark.parametrize("wrapper", ["bare", "legacy", "zip"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_exploits_are_refused_unrun(tmp_path, payload, wrapper):
  sentinel = tmp_path / "pwned"
  make, refused_global = PAYLOADS[payload]
  pickled, path = make(sentinel), tmp_path / "evil.pth"
  if wrapper == "bare":
    path.write_bytes(pickled)
  else:
    (_legacy_file if wrapper == "legacy" else _zip_file)(path, pickled)
  with pytest.raises(StateDictError) as error:
    load_state_dict(path)
  message = str(error.value)
  assert str(path) in message and refused_global in message and "model.state_dict()" in message
  assert not sentinel.exists()


def test_a_whole_pickled_model_is_refused(tmp_path):
  # torch.save(model) pickles the module's class: here, torch.nn.Linear built by NEWOBJ.
  pickled = b"\x80\x02ctorch.nn.modules.linear\nLinear\n)\x81."
  path = _legacy_file(tmp_path / "model.pth", pickled)
  with pytest.raises(StateDictError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict\(\)"):
    load_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", ["10 bytes", "half", "all but 1 byte", "all but 40 bytes"])
def test_truncated_files_are_refused(tmp_path, fmt, cut):
  data = open(_fixture(fmt), "rb").read()
  keep = {
    "10 bytes": 10,
    "half": len(data) // 2,
    "all but 1 byte": len(data) - 1,
    "all but 40 bytes": len(data) - 40,
  }[cut]
  path = tmp_path / f"cut_{fmt}.pth"
  path.write_bytes(data[:keep])
  with pytest.raises(StateDictError) as error:
    load_state_dict(path)
  assert str(path) in str(error.value)


@pytest.mark.parametrize("content", ["random bytes", "text", "empty", "plain pickle", "other zip"])
def test_files_of_other_kinds_are_refused(tmp_path, content):
  path = tmp_path / "file.pth"
  if content == "other zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("readme.txt", "hello")
  else:
    path.write_bytes(
      {
        "random bytes": np.random.default_rng(0).bytes(1000),
        "text": b"weights: 0.5, 0.25\nbias: 1\n",
        "empty": b"",
        "plain pickle": pickle.dumps({"w": [1.0, 2.0]}),
      }[content]
    )
  with pytest.raises(StateDictError, match="not a PyTorch state dict") as error:
    load_state_dict(path)
  assert str(path) in str(error.value)


def test_a_missing_file_names_its_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    load_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
  "obj,found",
  [
    ([1, 2], "holds a list"),
    ({"lr": 0.1}, "'lr' is of type float"),
    ({0: 1}, "the key 0 is not a name"),
  ],
)
def test_pickles_of_other_things_are_refused(tmp_path, fmt, obj, found):
  make = _legacy_file if fmt == "legacy" else _zip_file
  path = make(tmp_path / "other.pth", pickle.dumps(obj, protocol=2))
  with pytest.raises(StateDictError, match=found) as error:
    load_state_dict(path)
  assert str(path) in str(error.value) and "model.state_dict()" in str(error.value)


def test_a_training_checkpoint_is_refused_with_the_key_to_extract(tmp_path):
  # {"state_dict": <the fixture's state dict>, "epoch": 3}: its pickle spliced into a dict.
  with zipfile.ZipFile(_fixture("zip")) as fixture:
    entries = {name: fixture.read(name) for name in fixture.namelist()}
  folder = next(iter(entries)).split("/")[0]
  state = entries[f"{folder}/data.pkl"]
  entries[f"{folder}/data.pkl"] = (
    b"\x80\x02}" + _ops("state_dict") + state[2:-1] + b"s" + _ops("epoch") + _ops(3) + b"s."
  )
  path = tmp_path / "checkpoint.pth"
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in entries.items():
      archive.writestr(name, data)
  with pytest.raises(StateDictError, match=r"torch\.save\(checkpoint\['state_dict'\], path\)"):
    load_state_dict(path)


def test_a_big_endian_zip_is_refused(tmp_path):
  path = _zip_file(tmp_path / "big.pt", _one_tensor(0, (6,), (1,)), _storage_0(), b"big")
  with pytest.raises(StateDictError, match="byte order"):
    load_state_dict(path)


def test_a_legacy_count_unlike_the_pickles_is_refused(tmp_path):
  # The storage is whole, 6 elements as the pickle says, but its count says 5.
  path = _legacy_file(tmp_path / "count.pt", _one_tensor(0, (5,), (1,)), _storage_0(), {"0": 5})
  with pytest.raises(StateDictError, match="the count before storage 0") as error:
    load_state_dict(path)
  assert str(path) in str(error.value)
  path = _legacy_file(tmp_path / "ok.pt", _one_tensor(0, (5,), (1,)), _storage_0())
  np.testing.assert_array_equal(load_state_dict(path)["w"], np.arange(5))


def test_a_storage_shorter_than_its_tensors_say_is_refused(tmp_path):
  # The zip is whole, but its storage holds 5 elements where the pickle says 6.
  path = _zip_file(tmp_path / "short.pt", _one_tensor(0, (5,), (1,)), _storage_0(5))
  with pytest.raises(StateDictError, match="archive/data/0"):
    load_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_expanded_tensor_is_refused_before_it_is_allocated(tmp_path, fmt):
  """torch.zeros(1).expand(10**9) saves one element and a stride of 0: copied out, 4 GB."""
  write = _legacy_file if fmt == "legacy" else _zip_file
  path = write(tmp_path / "expanded.pt", _one_tensor(0, (10**9,), (0,), numel=1), _storage_0(1))
  with pytest.raises(StateDictError, match=r"1,000,000,000 elements but its storage 0 holds 1"):
    load_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_storage_past_the_cap_is_refused_unread(tmp_path, fmt):
  write = _legacy_file if fmt == "legacy" else _zip_file
  numel = MAX_ELEMENTS + 1
  path = write(tmp_path / "huge.pt", _one_tensor(0, (2,), (1,), numel=numel), _storage_0(2))
  with pytest.raises(StateDictError, match=f"claims {numel:,} elements"):
    load_state_dict(path)
