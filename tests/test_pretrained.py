"""Hugging Face BERT-family folders as text towers: MiniLM against its own library, fake folders for
the mapping of every tensor and for each error."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import _installed_or_skip
from jclip.data.wordpiece import WordPieceTokenizer
from jclip.models.pretrained import PretrainedError, load_hf_text_encoder, minilm_folder
from jclip.models.text import TEXT_PRESETS, TextTransformer

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.json"
VOCAB = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  "a",
  "red",
  "circle",
  "blue",
  "square",
  "##s",
  "the",
]
WIDTH, HEADS, MLP, LAYERS, POSITIONS = 8, 2, 16, 2, 12
BLOCK_NAMES = {  # the Hugging Face names of one block's modules, as in pretrained.py's docstring
  "bert": [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
  ],
  "distilbert": [
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    "attention.out_lin",
    "sa_layer_norm",
    "ffn.lin1",
    "ffn.lin2",
    "output_layer_norm",
  ],
}
LAYER_PREFIX = {"bert": "encoder.layer", "distilbert": "transformer.layer"}


def _minilm_folder_or_skip():
  """The package's folder; a skip where it is not installed, a failure in CI (CI=true)."""
  return _installed_or_skip(minilm_folder)


def _hf_tensors(model_type, seed=0):
  """Random tensors named and shaped as Hugging Face's BertModel / DistilBertModel stores them."""
  rng = np.random.default_rng(seed)
  rand = lambda *shape: rng.normal(0.0, 0.5, shape).astype(np.float32)
  tensors = {
    "embeddings.word_embeddings.weight": rand(len(VOCAB), WIDTH),
    "embeddings.position_embeddings.weight": rand(POSITIONS, WIDTH),
    "embeddings.LayerNorm.weight": 1.0 + rand(WIDTH),
    "embeddings.LayerNorm.bias": rand(WIDTH),
  }
  if model_type == "bert":
    tensors["embeddings.token_type_embeddings.weight"] = rand(2, WIDTH)
  for i in range(LAYERS):
    q, k, v, out, norm1, lin1, lin2, norm2 = (
      f"{LAYER_PREFIX[model_type]}.{i}.{name}" for name in BLOCK_NAMES[model_type]
    )
    for name, (out_dim, in_dim) in {
      q: (WIDTH, WIDTH),
      k: (WIDTH, WIDTH),
      v: (WIDTH, WIDTH),
      out: (WIDTH, WIDTH),
      lin1: (MLP, WIDTH),
      lin2: (WIDTH, MLP),
    }.items():
      tensors[f"{name}.weight"], tensors[f"{name}.bias"] = rand(out_dim, in_dim), rand(out_dim)
    for name in (norm1, norm2):
      tensors[f"{name}.weight"], tensors[f"{name}.bias"] = 1.0 + rand(WIDTH), rand(WIDTH)
  return tensors


def _hf_config(model_type):
  if model_type == "bert":
    return dict(
      model_type="bert",
      vocab_size=len(VOCAB),
      max_position_embeddings=POSITIONS,
      hidden_size=WIDTH,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      intermediate_size=MLP,
      hidden_act="gelu",
      hidden_dropout_prob=0.1,
      layer_norm_eps=1e-12,
      type_vocab_size=2,
      pad_token_id=0,
    )
  return dict(
    model_type="distilbert",
    vocab_size=len(VOCAB),
    max_position_embeddings=POSITIONS,
    dim=WIDTH,
    n_layers=LAYERS,
    n_heads=HEADS,
    hidden_dim=MLP,
    activation="gelu",
    dropout=0.1,
    pad_token_id=0,
  )


def _write_folder(folder, tensors, config, vocab=VOCAB):
  folder.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps(config))
  (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
  return folder


@jax.numpy_rank_promotion("allow")  # Hugging Face arithmetic as written: biases broadcast
def _reference_forward(tensors, model_type, tokens_BL):
  """Hugging Face's forward pass written from its tensors by name (x @ weight.T, heads split
  head-major, additive padding mask, post-LN), then the mean over non-padding tokens."""
  t = {name: jnp.asarray(x) for name, x in tensors.items()}
  linear = lambda x, name: x @ t[f"{name}.weight"].T + t[f"{name}.bias"]

  def layer_norm(x, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-12) * t[f"{name}.weight"] + t[f"{name}.bias"]

  batch, length = tokens_BL.shape
  x = t["embeddings.word_embeddings.weight"][tokens_BL]
  x = x + t["embeddings.position_embeddings.weight"][:length]
  if model_type == "bert":  # segment 0 everywhere
    x = x + t["embeddings.token_type_embeddings.weight"][0]
  x = layer_norm(x, "embeddings.LayerNorm")
  keep_BL = tokens_BL != 0
  split = lambda h: h.reshape(batch, length, HEADS, WIDTH // HEADS).transpose(0, 2, 1, 3)
  for i in range(LAYERS):
    q, k, v, out, norm1, lin1, lin2, norm2 = (
      f"{LAYER_PREFIX[model_type]}.{i}.{name}" for name in BLOCK_NAMES[model_type]
    )
    scores = split(linear(x, q)) @ split(linear(x, k)).transpose(0, 1, 3, 2)
    scores = scores / np.sqrt(WIDTH // HEADS) + jnp.where(keep_BL, 0.0, -1e9)[:, None, None, :]
    heads = jax.nn.softmax(scores, axis=-1) @ split(linear(x, v))
    x = layer_norm(
      x + linear(heads.transpose(0, 2, 1, 3).reshape(batch, length, WIDTH), out), norm1
    )
    x = layer_norm(x + linear(jax.nn.gelu(linear(x, lin1), approximate=False), lin2), norm2)
  mask = keep_BL[..., None]
  return (x * mask).sum(1) / mask.sum(1)


@pytest.fixture(scope="module")
def minilm():
  folder = _minilm_folder_or_skip()
  text_preset, params = load_hf_text_encoder(folder, preset="minilm_l6")
  return (
    TextTransformer(embed_dim=None, **vars(text_preset)),
    params,
    WordPieceTokenizer.from_hf_folder(folder),
  )


def test_minilm_tokens_match_the_reference():
  reference = json.loads(FIXTURE.read_text())
  tokenizer = WordPieceTokenizer.from_hf_folder(_minilm_folder_or_skip())
  tokens_NL = tokenizer.encode(reference["sentences"], 20)
  assert [row[row != 0].tolist() for row in tokens_NL] == reference["token_ids"]


def test_minilm_reproduces_sentence_transformers_embeddings(minilm):
  """Mean-pooled all-MiniLM-L6-v2 embeddings computed by the package's own sentence-transformers
  code on PyTorch (scripts/make_minilm_reference.py), before its final L2 normalisation."""
  model, params, tokenizer = minilm
  reference = json.loads(FIXTURE.read_text())
  assert reference["normalized"] is False
  # Sentences of different lengths in one padded batch: the padding must not change any of them.
  pooled_NW = model.apply({"params": params}, tokenizer.encode(reference["sentences"], 20))
  np.testing.assert_allclose(pooled_NW, np.array(reference["embeddings"]), atol=1e-4, rtol=0)


def test_minilm_params_are_exactly_the_towers_tree(minilm):
  model, params, _ = minilm
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32)))
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(
    lambda x: x.shape, shapes["params"]
  )


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_tiny_folder_loads_and_matches_hugging_face_arithmetic(tmp_path, model_type):
  tensors = _hf_tensors(model_type)
  reference_tensors = dict(tensors)
  if model_type == "bert":  # tensors that the loader knows and leaves out
    tensors["embeddings.position_ids"] = np.arange(POSITIONS, dtype=np.int64)[None]
    tensors["pooler.dense.weight"], tensors["pooler.dense.bias"] = np.eye(WIDTH), np.zeros(WIDTH)
  folder = _write_folder(tmp_path / model_type, tensors, _hf_config(model_type))
  text_preset, params = load_hf_text_encoder(folder)
  assert (text_preset.width, text_preset.num_layers, text_preset.vocab_size) == (
    WIDTH,
    LAYERS,
    len(VOCAB),
  )
  model = TextTransformer(embed_dim=None, **vars(text_preset))
  tokens_BL = WordPieceTokenizer.from_hf_folder(folder).encode(
    ["a red circle", "the blue squares"], 8
  )
  np.testing.assert_allclose(
    model.apply({"params": params}, tokens_BL),
    _reference_forward(reference_tensors, model_type, tokens_BL),
    atol=1e-5,
    rtol=1e-5,
  )


def test_encoder_saved_with_a_task_head_loads_without_the_head(tmp_path):
  """DistilBertForMaskedLM checkpoints keep the encoder under "distilbert." beside their head."""
  tensors = _hf_tensors("distilbert")
  with_head = {f"distilbert.{name}": x for name, x in tensors.items()}
  with_head["vocab_projector.weight"] = np.zeros((len(VOCAB), WIDTH), np.float32)
  _, bare = load_hf_text_encoder(
    _write_folder(tmp_path / "bare", tensors, _hf_config("distilbert"))
  )
  _, headed = load_hf_text_encoder(
    _write_folder(tmp_path / "head", with_head, _hf_config("distilbert"))
  )
  jax.tree.map(np.testing.assert_array_equal, bare, headed)


def test_missing_tensor_is_named(tmp_path):
  tensors = _hf_tensors("bert")
  del tensors["encoder.layer.1.output.dense.weight"]
  folder = _write_folder(tmp_path, tensors, _hf_config("bert"))
  with pytest.raises(
    PretrainedError, match=r"lacks 1 tensor.*encoder\.layer\.1\.output\.dense\.weight"
  ):
    load_hf_text_encoder(folder)


def test_unexpected_tensor_is_named(tmp_path):
  tensors = _hf_tensors("bert")
  tensors["encoder.layer.2.output.dense.weight"] = np.zeros((WIDTH, MLP), np.float32)
  folder = _write_folder(tmp_path, tensors, _hf_config("bert"))
  with pytest.raises(PretrainedError, match=r"does not have.*encoder\.layer\.2\.output\.dense"):
    load_hf_text_encoder(folder)


def test_shape_mismatch_is_named(tmp_path):
  tensors = _hf_tensors("distilbert")
  tensors["transformer.layer.0.ffn.lin1.weight"] = np.zeros((MLP + 1, WIDTH), np.float32)
  folder = _write_folder(tmp_path, tensors, _hf_config("distilbert"))
  with pytest.raises(
    PretrainedError,
    match=r"'transformer\.layer\.0\.ffn\.lin1\.weight'.*shape "
    r"\(17, 8\).*\(16, 8\)",
  ):
    load_hf_text_encoder(folder)


def test_vocab_of_another_size_is_refused(tmp_path):
  folder = _write_folder(tmp_path, _hf_tensors("bert"), _hf_config("bert"), vocab=VOCAB[:-1])
  with pytest.raises(PretrainedError, match=r"vocab\.txt has 11 tokens.*12 rows"):
    load_hf_text_encoder(folder)


def test_config_of_another_architecture_than_the_preset_is_refused(tmp_path):
  folder = _write_folder(tmp_path, _hf_tensors("bert"), _hf_config("bert"))
  with pytest.raises(
    PretrainedError, match=r"not the architecture of preset 'minilm_l6'.*width: 8"
  ):
    load_hf_text_encoder(folder, preset="minilm_l6")
  with pytest.raises(PretrainedError, match="not a known preset"):
    load_hf_text_encoder(folder, preset="bert_huge")


def test_unsupported_configs_are_refused_before_reading_weights(tmp_path):
  folder = _write_folder(
    tmp_path, _hf_tensors("bert"), {**_hf_config("bert"), "hidden_act": "gelu_new"}
  )
  with pytest.raises(PretrainedError, match="hidden_act='gelu_new'"):
    load_hf_text_encoder(folder)
  (folder / "config.json").write_text(json.dumps({**_hf_config("bert"), "model_type": "roberta"}))
  with pytest.raises(PretrainedError, match="model_type='roberta'"):
    load_hf_text_encoder(folder)
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    load_hf_text_encoder(tmp_path / "empty")


def test_minilm_preset_has_minilm_l6s_parameter_count():
  """all-MiniLM-L6-v2's BertModel has 22,713,216 parameters, of which the pooler (384 * 384 + 384)
  and the token-type table (2 * 384) are not in jclip's tower."""
  model = TextTransformer(embed_dim=None, **vars(TEXT_PRESETS["minilm_l6"]))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 22_713_216 - (384 * 384 + 384) - 2 * 384


def _tiny_pretrained_clip_config(folder, text_backbone_lr_scale):
  """The tiny CLIP of conftest with the generated BERT folder as its text tower."""
  from conftest import tiny_clip_config
  from jclip.config.defaults import text_tower, tokenizer

  config = tiny_clip_config()
  config.num_steps, config.checkpoint_every = 4, 4
  config.init.text_pretrained = str(folder)
  config.tokenizer = tokenizer("wordpiece")
  config.model.text = text_tower(
    "minilm_l6",
    vocab_size=len(VOCAB),
    max_len=POSITIONS,
    width=WIDTH,
    num_layers=LAYERS,
    num_heads=HEADS,
    mlp_dim=MLP,
    dropout_rate=0.0,
  )
  config.optim.text_backbone_lr_scale = text_backbone_lr_scale
  return config


def _flat(params):
  from flax import traverse_util

  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def test_clip_trains_with_a_frozen_pretrained_text_tower_and_reloads_its_tokenizer(tmp_path):
  from jclip.data.wordpiece import WordPieceTokenizer
  from jclip.evaluation.embedding import Predictor
  from jclip.runs.restore import restore_model
  from jclip.training import loop
  from jclip.training.state import init_state

  folder = _write_folder(tmp_path / "bert", _hf_tensors("bert"), _hf_config("bert"))
  config = _tiny_pretrained_clip_config(folder, text_backbone_lr_scale=0.0)
  _, loaded = load_hf_text_encoder(folder)
  _, fresh = init_state(config)
  trained = loop.train(config, str(tmp_path / "run"))

  text = _flat(trained.params["text_encoder"])
  for name, value in _flat(loaded).items():  # the backbone is the checkpoint's, untouched
    np.testing.assert_array_equal(text[name], value, err_msg=name)
  assert not np.allclose(text["proj/kernel"], _flat(fresh.params["text_encoder"])["proj/kernel"])
  assert not np.allclose(
    _flat(trained.params["image_encoder"])["proj/kernel"],
    _flat(fresh.params["image_encoder"])["proj/kernel"],
  )

  restored = restore_model(str(tmp_path / "run"))  # as eval.py reloads it
  assert isinstance(restored.tokenizer, WordPieceTokenizer)
  assert restored.tokenizer.encode(["a red circle"], 6).tolist() == [[2, 5, 6, 7, 3, 0]]
  predictor = Predictor(restored.model, restored.tokenizer, restored.config)
  emb = predictor.texts(restored.variables, ["a red circle", "the blue squares"])
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)


def test_fine_tuned_pretrained_text_tower_moves(tmp_path):
  from jclip.training import loop

  folder = _write_folder(tmp_path / "bert", _hf_tensors("bert"), _hf_config("bert"))
  trained = loop.train(
    _tiny_pretrained_clip_config(folder, text_backbone_lr_scale=0.1), str(tmp_path / "run")
  )
  _, loaded = load_hf_text_encoder(folder)
  moved = _flat(trained.params["text_encoder"])["block1/mlp_in/kernel"]
  assert not np.allclose(moved, _flat(loaded)["block1/mlp_in/kernel"])


def test_pretrained_folder_of_another_architecture_than_the_config_is_refused(tmp_path):
  from jclip.training import loop

  folder = _write_folder(tmp_path / "bert", _hf_tensors("bert"), _hf_config("bert"))
  config = _tiny_pretrained_clip_config(folder, text_backbone_lr_scale=0.0)
  config.model.text.num_layers = 1
  with pytest.raises(PretrainedError, match="text tower being built.*num_layers: 2 in config.json"):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists() or not any(
    (tmp_path / "run" / "checkpoints").iterdir()
  )


def test_unknown_pretrained_name_is_a_clear_error():
  from jclip.models.pretrained import hf_text_folder

  with pytest.raises(FileNotFoundError, match="neither a packaged model \\['minilm_l6'\\]"):
    hf_text_folder("/no/such/bert")
