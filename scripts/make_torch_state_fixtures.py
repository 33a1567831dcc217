"""Writes tests/fixtures/torch_state/: one small state dict saved by PyTorch, in both its formats.

jclip.models.torch_state reads PyTorch's files without PyTorch, so its tests need files that PyTorch
wrote and the arrays PyTorch meant by them:

    state_legacy.pth   torch.save(state, path, _use_new_zipfile_serialization=False): pickles
                       followed by the raw storages (the format of torch < 1.6)
    state_zip.pth      torch.save(state, path): the zip archive of current PyTorch
    expected.npz       every tensor as a numpy array (bfloat16 widened to float32, which is exact),
                       and `_dtypes`, "name:dtype" for each, the dtype the reader must return

The state dict is a real module's (a conv layer and a BatchNorm, so the dict carries PyTorch's
`_metadata` and an int64 `num_batches_tracked`) plus tensors that exercise the reader's arithmetic:
a transposed weight saved as is (non-contiguous), two views of one shared storage, one of them
strided and starting at an offset, float16, bfloat16, int32, uint8 and bool tensors, and an
nn.Parameter (saved through torch._utils._rebuild_parameter). Values are random but seeded.

Run once, in an environment with torch (never needed by jclip itself or its tests):

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python scripts/make_torch_state_fixtures.py
"""

import os

import numpy as np
import torch

OUTPUT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "torch_state"
)


def make_state():
  torch.manual_seed(0)
  module = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 2), torch.nn.BatchNorm2d(2))
  module[1].running_mean.normal_()
  module[1].num_batches_tracked.fill_(7)
  state = module.state_dict()  # an OrderedDict with `_metadata`, as every real state dict
  shared = torch.randn(20)  # both views below save all 20 elements, once
  state["head.weight_t"] = torch.randn(3, 5).t()  # stride (1, 5): not contiguous
  state["shared.head"] = shared[2:8]  # storage offset 2
  state["shared.grid"] = shared.view(4, 5)[1:, ::2]  # offset 5, stride (5, 2)
  state["extra.half"] = torch.randn(4).half()
  state["extra.bfloat16"] = torch.randn(5).bfloat16()
  state["extra.int32"] = torch.tensor([-3, 0, 2**31 - 1], dtype=torch.int32)
  state["extra.uint8"] = torch.tensor([0, 7, 255], dtype=torch.uint8)
  state["extra.mask"] = torch.tensor([True, False, True])
  state["extra.param"] = torch.nn.Parameter(torch.randn(2, 2))
  assert not state["head.weight_t"].is_contiguous()
  assert state["shared.grid"].storage_offset() == 5 and state["shared.grid"].stride() == (5, 2)
  return state


def main():
  os.makedirs(OUTPUT, exist_ok=True)
  state = make_state()
  torch.save(state, os.path.join(OUTPUT, "state_legacy.pth"), _use_new_zipfile_serialization=False)
  torch.save(state, os.path.join(OUTPUT, "state_zip.pth"))
  arrays = {
    name: (t.detach().float() if t.dtype == torch.bfloat16 else t.detach()).numpy()
    for name, t in state.items()
  }
  dtypes = [f"{name}:{str(t.dtype).removeprefix('torch.')}" for name, t in state.items()]
  np.savez_compressed(os.path.join(OUTPUT, "expected.npz"), _dtypes=np.array(dtypes), **arrays)
  for name in sorted(os.listdir(OUTPUT)):
    print(f"{name}: {os.path.getsize(os.path.join(OUTPUT, name))} bytes")


if __name__ == "__main__":
  main()
