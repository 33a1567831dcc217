"""The text tower: a bidirectional transformer with padding-masked mean pooling and no CLS token.

    tokens [B, L] int32 (0 = padding); F = width
    embed  token + learned position embeddings           [B, L, F]
    blocks N x (self-attention over non-padding keys, MLP) [B, L, F]
    pool   mean over the non-padding positions only      [B, F]
    proj   dense, no activation; none if embed_dim=None  [B, embed_dim]

The pooled sentence vector is a masked mean: averaging over padding too would make the embedding of
a caption depend on how much padding its batch happened to need. With embed_dim=None the tower
returns that pooled [B, F] vector itself, which is what a pretrained sentence encoder outputs (and
what a linear probe reads).

Two block layouts are supported, so that published checkpoints can be loaded into the same module:
  pre_norm=True   x + Attn(LN(x)); x + MLP(LN(x)); a final LN   (GPT-2 / ViT style; trains easily)
  pre_norm=False  LN(x + Attn(x)); LN(x + MLP(x)); LN after the embeddings  (BERT / DistilBERT)
Hugging Face BERT and DistilBERT checkpoints load into the second layout with
`jclip.models.pretrained.load_hf_text_encoder`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jclip.models.conv import FlatDense
from jclip.models.heads import project
from jclip.models.remat import rematerialised

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class TextPreset:
  """Architecture hyper-parameters of a text tower; fields mirror `TextTransformer`'s attributes."""

  vocab_size: int
  max_len: int
  width: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  pre_norm: bool
  embed_norm: bool
  layer_norm_eps: float
  dropout_rate: float


TEXT_PRESETS = {
  # SmallBERT-like: 4 pre-LN layers of width 256. vocab_size is a default; sentencepiece
  # configs set it to the tokenizer's size.
  "small": TextPreset(
    vocab_size=8192,
    max_len=64,
    width=256,
    num_layers=4,
    num_heads=4,
    mlp_dim=1024,
    pre_norm=True,
    embed_norm=False,
    layer_norm_eps=1e-6,
    dropout_rate=0.0,
  ),
  # DistilBERT-base (Sanh et al. 2019) laid out as Hugging Face's DistilBertModel: embedding
  # LayerNorm, post-LN blocks, exact GELU, LayerNorm epsilon 1e-12, 512 positions.
  "distilbert": TextPreset(
    vocab_size=30522,
    max_len=512,
    width=768,
    num_layers=6,
    num_heads=12,
    mlp_dim=3072,
    pre_norm=False,
    embed_norm=True,
    layer_norm_eps=1e-12,
    dropout_rate=0.1,
  ),
  # all-MiniLM-L6-v2 (sentence-transformers): a 6-layer BERT of width 384 distilled from a larger
  # one (Wang et al. 2020), the same post-LN layout as DistilBERT, mean-pooled.
  "minilm_l6": TextPreset(
    vocab_size=30522,
    max_len=512,
    width=384,
    num_layers=6,
    num_heads=12,
    mlp_dim=1536,
    pre_norm=False,
    embed_norm=True,
    layer_norm_eps=1e-12,
    dropout_rate=0.1,
  ),
}


def masked_mean(x_BLF, mask_BL):
  """Mean of x over the positions where mask is true; an all-padding row gives zeros, not NaN."""
  mask_BL1 = mask_BL[..., None].astype(x_BLF.dtype)
  count_B1 = jnp.maximum(jnp.sum(mask_BL1, axis=1), 1.0)
  return jnp.sum(x_BLF * mask_BL1, axis=1) / count_B1


class TransformerBlock(nn.Module):
  """Self-attention + MLP, in the pre- or post-LayerNorm layout."""

  num_heads: int
  mlp_dim: int
  pre_norm: bool
  layer_norm_eps: float
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLF, attn_mask_B1LL, train: bool):
    width = x_BLF.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    attention = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      dropout_rate=self.dropout_rate,
      deterministic=not train,
      force_fp32_for_softmax=True,  # bfloat16 scores, float32 softmax: as the loss's
      name="attention",
    )
    mlp_in = FlatDense(self.mlp_dim, dtype=self.dtype, name="mlp_in")
    mlp_out = FlatDense(width, dtype=self.dtype, name="mlp_out")
    mlp = lambda h: mlp_out(drop(nn.gelu(mlp_in(h), approximate=False)))

    if self.pre_norm:
      h = norm("attention_norm")(x_BLF)
      x_BLF = x_BLF + drop(attention(h, h, mask=attn_mask_B1LL))
      return x_BLF + drop(mlp(norm("mlp_norm")(x_BLF)))
    x_BLF = norm("attention_norm")(x_BLF + drop(attention(x_BLF, x_BLF, mask=attn_mask_B1LL)))
    return norm("mlp_norm")(x_BLF + drop(mlp(x_BLF)))


class TextTransformer(nn.Module):
  """Transformer text encoder: tokens [B, L] -> embeddings [B, embed_dim]; 0 is the padding id.

  embed_dim=None leaves out the projection: the output is the pooled [B, width] features. Given
  those pooled features by name (`pooled_BF`) it applies only the projection: a locked tower's
  features can be computed once and cached (jclip/runs/feature_cache.py). `remat` recomputes each
  block's activations in the backward pass instead of keeping them (jclip/models/remat.py).
  """

  vocab_size: int
  max_len: int
  width: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  embed_dim: int | None
  pre_norm: bool = True
  embed_norm: bool = False
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  head_dim: int | None = None  # the projection's hidden width (jclip/models/heads.py); None: linear
  head_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, tokens_BL=None, train: bool = False, *, pooled_BF=None):
    if pooled_BF is not None:
      return self._project(pooled_BF, train)
    seq_len = tokens_BL.shape[1]
    if seq_len > self.max_len:
      raise ValueError(
        f"Token sequences of length {seq_len} exceed the tower's max_len "
        f"{self.max_len}: shorten data.max_text_len or raise model.text.max_len."
      )
    mask_BL = tokens_BL != PAD_ID
    init = nn.initializers.normal(stddev=0.02)
    token_emb = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="token_embed")
    pos_emb_LF = self.param("pos_embed", init, (self.max_len, self.width))[:seq_len]
    x_BLF = (token_emb(tokens_BL) + pos_emb_LF[None]).astype(self.dtype)
    if self.embed_norm:
      x_BLF = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="embed_norm")(x_BLF)
    x_BLF = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BLF)

    attn_mask_B1LL = nn.make_attention_mask(mask_BL, mask_BL)
    transformer_block = rematerialised(TransformerBlock, self.remat, train_argnum=3)
    for i in range(self.num_layers):
      x_BLF = transformer_block(
        self.num_heads,
        self.mlp_dim,
        self.pre_norm,
        self.layer_norm_eps,
        self.dropout_rate,
        self.dtype,
        name=f"block{i + 1}",
      )(x_BLF, attn_mask_B1LL, train)
    if self.pre_norm:
      x_BLF = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="final_norm")(x_BLF)
    return self._project(masked_mean(x_BLF, mask_BL), train)

  def _project(self, pooled_BF, train: bool):
    if self.embed_dim is None:
      return pooled_BF
    return project(pooled_BF, self.embed_dim, self.head_dim, self.head_dropout, self.dtype, train)
