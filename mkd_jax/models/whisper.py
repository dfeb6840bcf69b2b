"""The one Flax Whisper, for teacher and student roles.

Pre-LN transformer encoder-decoder with a two-conv front end, a loaded encoder position table,
learned decoder positions and an output projection tied to the token embedding. Parameter names
follow Hugging Face Whisper (`layers_{i}`, `self_attn`, `encoder_attn`, `q_proj`, `fc1`, ...) so
checkpoint loading, LoRA regexes and PEFT export map one to one.

Every parameter carries logical axis names; activations are constrained at block boundaries.
Models return `(logits, out)`, where `out` holds every layer's hidden state by name:
`encoder/layer_{i}` (output of block i), `encoder/output` (after the final layer norm, what the
decoder attends to), `decoder/layer_{i}` and `decoder/output`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
ACT = ("act_batch", "act_time", "act_embed")


def sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's encoder position table; only an initialiser (checkpoints carry their own)."""
    half = channels // 2
    inv = np.exp(-np.log(10000) / (half - 1) * np.arange(half))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def matmul_inputs(dtype: Dtype | None):
    """A `dot_general` that rounds both operands to `dtype` and accumulates in float32 (None:
    `lax.dot_general` as is). On a CPU with AVX512-BF16, bfloat16 operands run the dense layers
    at about twice the float32 rate (BUILD_NOTES "Matmul inputs in bfloat16")."""
    if dtype is None:
        return jax.lax.dot_general

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        del preferred_element_type  # always float32
        return jax.lax.dot_general(
            lhs.astype(dtype),
            rhs.astype(dtype),
            dimension_numbers,
            precision=precision,
            preferred_element_type=jnp.float32,
        )

    return dot_general


def _dense(
    features: int,
    axes: tuple,
    *,
    use_bias: bool = True,
    dtype: Dtype,
    name: str,
    matmul_dtype: Dtype | None = None,
):
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        dot_general=matmul_inputs(matmul_dtype),
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


def _layer_norm(name: str) -> nn.LayerNorm:
    # Whisper normalises in float32 whatever the compute dtype.
    return nn.LayerNorm(
        epsilon=1e-5,
        dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def _constrain(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ACT)


def fused_attention(q: jax.Array, k: jax.Array, mask) -> bool:
    """Whether `Attention.attend` runs cuDNN's fused (flash) attention: on a GPU, with
    half-precision inputs, for unmasked self-attention (the encoder's: at 30 s its [B, H, 1500,
    1500] scores never materialise). Elsewhere the einsum form runs (on the CPU XLA's fused
    `dot_product_attention` was slower: BUILD_NOTES, "Teacher-output cache and step speed")."""
    return (
        mask is None
        and jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[1] == k.shape[1]
    )


def query_blocks(t: int) -> int | None:
    """How many blocks of at most 512 queries `tiled_attention` cuts `t` positions into (an
    even cut, at most 16 blocks); None where none fits."""
    return next((n for n in range(1, 17) if t % n == 0 and t // n <= 512), None)


def tiled_attention(q: jax.Array, k: jax.Array, mask) -> bool:
    """Whether `Attention.attend` runs `attention_by_tiles`: on a one-device CPU, for unmasked
    self-attention over at least 256 positions (the encoder's). One (batch row, head, block of
    queries) at a time, a tile's scores (500 x 1500 floats at 30 s, 3 MB) stay in the cache;
    the einsum form writes all [B, H, 1500, 1500] scores to memory and reads them back twice.
    One tiny.en encoder attention at batch 16 took 0.41 s instead of 0.64 s (BUILD_NOTES
    "Encoder attention by tiles"). With several devices the einsum form stays: a loop over the
    batch would gather a batch-sharded array onto every device."""
    return (
        mask is None
        and jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and q.shape[1] == k.shape[1] >= 256
        and query_blocks(q.shape[1]) is not None
    )


def attention_by_tiles(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v over [B, T, H, Dh] inputs (`q` already scaled), one (batch row, head,
    block of queries) tile at a time; the einsum form's result to float rounding. Scores and
    products accumulate in float32; the output has `q`'s dtype."""
    b, t, h, d = q.shape
    n = query_blocks(t)
    qs = q.transpose(0, 2, 1, 3).reshape(b * h, n, t // n, d)
    ks, vs = (x.transpose(0, 2, 1, 3).reshape(b * h, t, d) for x in (k, v))

    def head(args):
        q_blocks, k1, v1 = args

        def block(q1):
            logits = jnp.dot(q1, k1.T, preferred_element_type=jnp.float32)
            probs = jax.nn.softmax(logits, axis=-1).astype(v1.dtype)
            return jnp.dot(probs, v1, preferred_element_type=jnp.float32).astype(q.dtype)

        return jax.lax.map(block, q_blocks)

    y = jax.lax.map(head, (qs, ks, vs))  # [B * H, n, T / n, Dh]
    return y.reshape(b, h, t, d).transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """Multi-head attention; the key projection has no bias, as in Whisper."""

    d_model: int
    num_heads: int
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    def setup(self):
        d = self.d_model
        kw = dict(dtype=self.dtype, matmul_dtype=self.matmul_dtype)
        self.q_proj = _dense(d, ("embed", "heads"), name="q_proj", **kw)
        self.k_proj = _dense(d, ("embed", "heads"), use_bias=False, name="k_proj", **kw)
        self.v_proj = _dense(d, ("embed", "heads"), name="v_proj", **kw)
        self.out_proj = _dense(d, ("heads", "embed"), name="out_proj", **kw)

    def _split(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.d_model // self.num_heads)

    def project_kv(self, x: jax.Array, heads_first: bool = False) -> tuple[jax.Array, jax.Array]:
        """Keys and values, each [B, S, H, Dh]; with `heads_first`, [B, H, S, Dh]. In
        `matmul_dtype` where one is set: they only enter matmuls."""
        k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
        if self.matmul_dtype is not None:
            k, v = k.astype(self.matmul_dtype), v.astype(self.matmul_dtype)
        if heads_first:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        return k, v

    def attend(
        self, x: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, heads_first=False
    ) -> jax.Array:
        """Queries from `x` [B, T, D] attend to `k`, `v` [B, S, H, Dh] (with `heads_first`:
        [B, H, S, Dh]); `mask` ~ [B, H, T, S].

        Decoding keeps its keys and values heads-first: it reads the 1500-frame cross-attention
        K/V at every step, and XLA:CPU's batched dot wants the heads (a batch dimension) major, so
        stored positions-first they were transposed again at every step (BUILD_NOTES "Profiles of
        the step and of the decoding loop"). Training and the encoders keep positions-first:
        with every attention heads-first, XLA's plan for the uncached training step grew from
        920 to 1240 MB.
        """
        head_dim = self.d_model // self.num_heads
        q = self._split(self.q_proj(x)) * head_dim**-0.5  # [B, T, H, Dh]
        if self.matmul_dtype is not None:
            q, k, v = (a.astype(self.matmul_dtype) for a in (q, k, v))
        if fused_attention(q, k, mask) and not heads_first:
            y = jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation="cudnn")
        elif tiled_attention(q, k, mask) and not heads_first:
            y = attention_by_tiles(q, k, v)
        else:
            kv = "bhsd" if heads_first else "bshd"
            logits = jnp.einsum(f"bthd,{kv}->bhts", q, k, preferred_element_type=jnp.float32)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            y = jnp.einsum(f"bhts,{kv}->bthd", probs, v, preferred_element_type=jnp.float32)
            y = y.astype(v.dtype)
        return self.out_proj(y.reshape(x.shape[0], x.shape[1], self.d_model))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        k, v = self.project_kv(x)
        return self.attend(x, k, v, mask)


class EncoderLayer(nn.Module):
    d_model: int
    num_heads: int
    ffn_dim: int
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _layer_norm("self_attn_layer_norm")(x).astype(self.dtype)
        kw = dict(dtype=self.dtype, matmul_dtype=self.matmul_dtype)
        x = x + Attention(self.d_model, self.num_heads, name="self_attn", **kw)(h)
        h = _layer_norm("final_layer_norm")(x).astype(self.dtype)
        h = _dense(self.ffn_dim, ("embed", "mlp"), name="fc1", **kw)(h)
        h = jax.nn.gelu(h, approximate=False)
        x = x + _dense(self.d_model, ("mlp", "embed"), name="fc2", **kw)(h)
        return _constrain(x)


class DecoderLayer(nn.Module):
    d_model: int
    num_heads: int
    ffn_dim: int
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    def setup(self):
        self.self_attn_layer_norm = _layer_norm("self_attn_layer_norm")
        kw = dict(dtype=self.dtype, matmul_dtype=self.matmul_dtype)
        self.self_attn = Attention(self.d_model, self.num_heads, **kw)
        self.encoder_attn_layer_norm = _layer_norm("encoder_attn_layer_norm")
        self.encoder_attn = Attention(self.d_model, self.num_heads, **kw)
        self.final_layer_norm = _layer_norm("final_layer_norm")
        self.fc1 = _dense(self.ffn_dim, ("embed", "mlp"), name="fc1", **kw)
        self.fc2 = _dense(self.d_model, ("mlp", "embed"), name="fc2", **kw)

    def cross_kv(self, enc: jax.Array, heads_first: bool = False) -> tuple[jax.Array, jax.Array]:
        return self.encoder_attn.project_kv(enc, heads_first)

    def __call__(self, x, cross_kv, mask, cache=None, pos=None):
        """One block. With `cache` (decoding: {"k", "v"} [B, H, T_max, Dh], keys written at
        `pos`) every key and value is heads-first, `cross_kv` too (`Whisper.cross_kv`)."""
        decoding = cache is not None
        h = self.self_attn_layer_norm(x).astype(self.dtype)
        k, v = self.self_attn.project_kv(h, decoding)
        if decoding:
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, 0, pos, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, 0, pos, 0))
            cache = {"k": k, "v": v}
        x = x + self.self_attn.attend(h, k, v, mask, decoding)
        h = self.encoder_attn_layer_norm(x).astype(self.dtype)
        x = x + self.encoder_attn.attend(h, *cross_kv, None, decoding)
        h = self.final_layer_norm(x).astype(self.dtype)
        x = x + self.fc2(jax.nn.gelu(self.fc1(h), approximate=False))
        return _constrain(x), cache


class Encoder(nn.Module):
    num_mel_bins: int
    d_model: int
    layers: int
    num_heads: int
    ffn_dim: int
    max_positions: int
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, mel: jax.Array, *, start: int = 0) -> tuple[jax.Array, dict]:
        """`mel` [B, n_mels, frames] (frames <= 2 * max_positions, even) -> [B, frames/2, D].

        With `start` > 0, `mel` is instead layer `start - 1`'s output [B, T, D] and only layers
        `start`.. run (a frozen lower encoder whose output is cached); `out` then holds the
        sites from layer `start` on.
        """
        if not 0 <= start < self.layers:
            raise ValueError(f"encoder start layer {start} outside 0..{self.layers - 1}")
        if start:
            if mel.ndim != 3 or mel.shape[2] != self.d_model:
                raise ValueError(
                    f"encoder from layer {start} expects hidden states [batch, frames, "
                    f"{self.d_model}], got {mel.shape}"
                )
            return self._from(mel, start)
        if mel.ndim != 3 or mel.shape[1] != self.num_mel_bins:
            raise ValueError(
                f"encoder expects log-mel [batch, {self.num_mel_bins}, frames], got {mel.shape}"
            )
        frames = mel.shape[2]
        if frames % 2 or frames // 2 > self.max_positions:
            raise ValueError(
                f"mel has {frames} frames; need an even count <= {2 * self.max_positions}"
            )
        conv = dict(
            features=self.d_model,
            kernel_size=(3,),
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )
        x = jnp.swapaxes(mel, 1, 2).astype(self.dtype)  # [B, frames, n_mels]
        x = jax.nn.gelu(nn.Conv(padding=((1, 1),), name="conv1", **conv)(x), approximate=False)
        x = nn.Conv(strides=(2,), padding=((1, 1),), name="conv2", **conv)(x)
        x = jax.nn.gelu(x, approximate=False)
        table = self.param(
            "embed_positions",
            nn.with_logical_partitioning(
                lambda *_: jnp.asarray(sinusoids(self.max_positions, self.d_model)),
                (None, "embed"),
            ),
        )
        # Shorter contexts use the head of the table, as Whisper does for short inputs.
        x = _constrain(x + table[: x.shape[1]].astype(self.dtype))
        return self._from(x, 0)

    def _from(self, x: jax.Array, start: int) -> tuple[jax.Array, dict]:
        """Layers `start`.. and the final norm (called from `__call__`, inside its scope)."""
        out = {}
        for i in range(start, self.layers):
            x = EncoderLayer(
                self.d_model,
                self.num_heads,
                self.ffn_dim,
                self.dtype,
                self.matmul_dtype,
                name=f"layers_{i}",
            )(x)
            out[f"encoder/layer_{i}"] = x
        x = _layer_norm("layer_norm")(x)
        out["encoder/output"] = x
        return x, out


class Decoder(nn.Module):
    vocab_size: int
    d_model: int
    layers: int
    num_heads: int
    ffn_dim: int
    max_positions: int
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    def setup(self):
        self.embed_tokens = nn.Embed(
            self.vocab_size,
            self.d_model,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")
            ),
        )
        self.embed_positions = self.param(
            "embed_positions",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.max_positions, self.d_model),
        )
        self.blocks = [
            DecoderLayer(
                self.d_model,
                self.num_heads,
                self.ffn_dim,
                self.dtype,
                self.matmul_dtype,
                name=f"layers_{i}",
            )
            for i in range(self.layers)
        ]
        self.layer_norm = _layer_norm("layer_norm")

    def cross_kv(self, enc: jax.Array, heads_first: bool = False) -> list[tuple]:
        return [block.cross_kv(enc.astype(self.dtype), heads_first) for block in self.blocks]

    def __call__(self, tokens, cross_kv, *, cache=None, pos=0):
        """`tokens` [B, S] at positions pos..pos+S-1 -> (logits [B, S, V] f32, out, cache).

        `cross_kv`: `cross_kv(enc)`; with `cache` (decoding), `cross_kv(enc, heads_first=True)`."""
        s = tokens.shape[1]
        positions = jax.lax.dynamic_slice_in_dim(self.embed_positions, pos, s)
        x = self.embed_tokens(tokens).astype(self.dtype) + positions.astype(self.dtype)
        x = _constrain(x)
        q_pos = pos + jnp.arange(s)
        k_pos = q_pos if cache is None else jnp.arange(cache[0]["k"].shape[2])
        mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, S, K]
        out, new_cache = {}, []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, cross_kv[i], mask, None if cache is None else cache[i], pos)
            new_cache.append(layer_cache)
            out[f"decoder/layer_{i}"] = x
        x = self.layer_norm(x)
        out["decoder/output"] = x
        # Tied output projection, computed in float32 for stable losses (from `matmul_dtype`
        # operands where one is set).
        table = self.embed_tokens.embedding
        logits = matmul_inputs(self.matmul_dtype)(
            x.astype(jnp.float32), table, (((x.ndim - 1,), (1,)), ((), ()))
        )
        return logits, out, (new_cache if cache is not None else None)


class Whisper(nn.Module):
    """Whisper encoder-decoder. Fields use Hugging Face `WhisperConfig` names; `dtype` is the
    compute dtype and `matmul_dtype`, where set, the dtype every dense layer's operands (and the
    tied output layer's) are rounded to before a float32-accumulated matmul: inference on a CPU
    with AVX512-BF16 sets it to bfloat16 (`decode.with_matmul_dtype`)."""

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 512
    encoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_layers: int = 6
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    max_source_positions: int = 1500
    max_target_positions: int = 448
    dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    def setup(self):
        self.encoder = Encoder(
            self.num_mel_bins,
            self.d_model,
            self.encoder_layers,
            self.encoder_attention_heads,
            self.encoder_ffn_dim,
            self.max_source_positions,
            self.dtype,
            self.matmul_dtype,
        )
        self.decoder = Decoder(
            self.vocab_size,
            self.d_model,
            self.decoder_layers,
            self.decoder_attention_heads,
            self.decoder_ffn_dim,
            self.max_target_positions,
            self.dtype,
            self.matmul_dtype,
        )

    def __call__(self, mel: jax.Array, tokens: jax.Array, *, train: bool = False):
        """Teacher-forced forward pass: `mel` [B, n_mels, F], `tokens` [B, S] -> (logits, out)."""
        del train  # no dropout in the frozen model; LoRA dropout lives outside it
        enc, out = self.encoder(mel)
        logits, dec_out, _ = self.decoder(tokens, self.decoder.cross_kv(enc))
        return logits, {**out, **dec_out}

    def encode(self, mel: jax.Array) -> tuple[jax.Array, dict]:
        return self.encoder(mel)

    def forward_from(self, hidden: jax.Array, tokens: jax.Array, *, start: int):
        """Teacher-forced pass from encoder layer `start`'s input `hidden` [B, T, D] (layer
        `start - 1`'s output) -> (logits, out): the layers below are frozen and cached."""
        enc, out = self.encoder(hidden, start=start)
        logits, dec_out, _ = self.decoder(tokens, self.decoder.cross_kv(enc))
        return logits, {**out, **dec_out}

    def decode_forced(self, enc: jax.Array, tokens: jax.Array):
        """Teacher-forced decoder on a given encoder output `enc` [B, T, D] -> (logits, out).

        With a frozen encoder whose outputs are cached, training runs only this half.
        """
        logits, out, _ = self.decoder(tokens, self.decoder.cross_kv(enc))
        return logits, out

    def cross_kv(self, enc: jax.Array):
        """Per-layer cross-attention keys and values [B, H, T, Dh], computed once per utterance
        for decoding (`decode_step`)."""
        return self.decoder.cross_kv(enc, heads_first=True)

    def decode_step(self, tokens, cross_kv, cache, pos):
        """Decode `tokens` [B, S] at `pos` with a KV cache -> (logits [B, S, V], cache)."""
        logits, _, cache = self.decoder(tokens, cross_kv, cache=cache, pos=pos)
        return logits, cache

    def init_cache(self, batch: int, max_len: int) -> list[dict]:
        """Zeroed self-attention cache: one {"k", "v"} [B, H, max_len, Dh] per decoder layer."""
        h = self.decoder_attention_heads
        shape = (batch, h, max_len, self.d_model // h)
        return [
            {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
            for _ in range(self.decoder_layers)
        ]


HF_FIELDS = tuple(
    f for f in Whisper.__dataclass_fields__ if f not in ("parent", "name", "dtype", "matmul_dtype")
)


def dims_from_hf_config(cfg: dict) -> dict:
    """Whisper fields from a Hugging Face `config.json` dict, checking what we assume.

    Raises:
      ValueError: naming the key and value: a missing field, one that is not a positive integer,
        heads that do not divide `d_model`, or a setting we do not implement.
    """
    missing = [k for k in HF_FIELDS if k not in cfg]
    if missing:
        raise ValueError(f"Whisper config lacks {missing}")
    if cfg.get("activation_function", "gelu") != "gelu":
        raise ValueError(
            f"activation_function={cfg['activation_function']!r}; only 'gelu' is supported"
        )
    if cfg.get("scale_embedding", False):
        raise ValueError("scale_embedding=True is not Whisper's convention and is not supported")
    dims = {}
    for k in HF_FIELDS:
        v = cfg[k]
        integral = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
        if isinstance(v, bool) or not integral or v <= 0:
            raise ValueError(f"{k}={v!r} must be a positive integer")
        dims[k] = int(v)
    for side in ("encoder", "decoder"):
        heads = dims[f"{side}_attention_heads"]
        if dims["d_model"] % heads:
            raise ValueError(
                f"{side}_attention_heads={heads} does not divide d_model={dims['d_model']}"
            )
    return dims


def _check_dims_against_state(dims: dict, state: dict) -> None:
    """Compares the config's sizes with the tensors before any model is traced.

    A corrupt config (say `encoder_layers=10**6`) would otherwise trace a huge model first.
    """
    found = {
        "d_model": ("model.encoder.conv1.weight", 0),
        "num_mel_bins": ("model.encoder.conv1.weight", 1),
        "vocab_size": ("model.decoder.embed_tokens.weight", 0),
        "max_source_positions": ("model.encoder.embed_positions.weight", 0),
        "max_target_positions": ("model.decoder.embed_positions.weight", 0),
    }
    for field, (key, axis) in found.items():
        shape = np.shape(state[key]) if key in state else ()
        if len(shape) > axis and shape[axis] != dims[field]:
            raise ValueError(f"{field}={dims[field]}, but {key!r} has shape {shape}")
    for side in ("encoder", "decoder"):
        prefix = f"model.{side}.layers."
        layers = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)}
        if layers and len(layers) != dims[f"{side}_layers"]:
            raise ValueError(
                f"{side}_layers={dims[f'{side}_layers']}, but the weights hold {len(layers)} "
                f"{side} layers"
            )


def abstract_params(model: Whisper, *, batch: int = 1, frames: int | None = None, tokens: int = 4):
    """Boxed parameter shapes (with logical axes) from `jax.eval_shape`; no memory is allocated."""
    frames = frames or 2 * model.max_source_positions
    mel = jax.ShapeDtypeStruct((batch, model.num_mel_bins, frames), jnp.float32)
    tok = jax.ShapeDtypeStruct((batch, tokens), jnp.int32)
    return jax.eval_shape(lambda m, t: model.init(jax.random.key(0), m, t), mel, tok)["params"]


def from_hf(folder, *, dtype: Dtype = jnp.float32) -> tuple[Whisper, dict, dict]:
    """Model, float32 numpy params and HF config from a Hugging Face Whisper folder.

    Raises:
      FileNotFoundError: a missing config or weights file, named.
      hf_io.CheckpointError: (a ValueError) one line naming the file and the key or tensor: bad
        JSON, a config field that is not a positive integer or disagrees with the weights, an
        unreadable safetensors file, a shard index pointing outside the folder, a non-finite
        weight, or tensors that do not fit the model.
    """
    from mkd_jax.models import hf_io

    config, state = hf_io.load_hf_folder(folder)
    try:
        dims = dims_from_hf_config(config)
        _check_dims_against_state(dims, state)
    except ValueError as e:
        raise hf_io.CheckpointError(f"{Path(folder) / 'config.json'}: {e}") from None
    model = Whisper(**dims, dtype=dtype)
    expected = nn.unbox(abstract_params(model, frames=2 * model.max_source_positions))
    try:
        params = hf_io.flax_from_hf_state(state, expected)
    except ValueError as e:
        raise hf_io.CheckpointError(f"{_weights_file(folder)}: {e}") from None
    return model, params, config


def _weights_file(folder) -> Path:
    single = Path(folder) / "model.safetensors"
    return single if single.is_file() else Path(folder) / "model.safetensors.index.json"


def load(folder, *, dtype: Dtype = jnp.float32) -> tuple[Whisper, dict, dict]:
    """Load an HF Whisper folder (`assets.load_model` also takes model names and CTranslate2
    folders). Returns `(model, params, config)`; `config["_folder"]` is the folder, which also
    holds the tokenizer and generation config.
    """
    model, params, config = from_hf(folder, dtype=dtype)
    return model, params, dict(config, _folder=str(folder))
