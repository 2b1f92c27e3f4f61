"""``gpt``: a small decoder-only transformer language model (pre-LayerNorm, causal attention).

The model maps token ids ``(batch, context)`` to next-token logits ``(batch, context, vocab)``:
position ``t`` of the output predicts token ``t + 1`` of the text, so the data's labels are the
inputs shifted by one (``prunelab.data`` ``text`` does this). Built for the ``text`` data set
(bytes: vocabulary 256), with ``in_shape = (context,)`` and ``num_classes = vocab``.

Architecture (GPT-2's layout, Radford et al. 2019): token + learned position embeddings → ``layers``
blocks of ``x + attn(LN(x))`` then ``x + mlp(LN(x))`` → final LayerNorm → a linear head. Attention
is causal multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``
(``is_causal=True``) with one fused ``qkv`` projection and an output projection ``proj``; the MLP
is ``fc`` (width → ``mlp_ratio`` × width), GELU, ``proj`` (back to width). Initialisation follows
GPT-2: normal(0, 0.02) for Linear and Embedding weights, residual projections scaled by
1/√(2·layers), biases 0.

What is prunable. Every block's four weight matrices (``blocks.<i>.attn.qkv``, ``.attn.proj``,
``.mlp.fc``, ``.mlp.proj``) are ``nn.Linear`` layers, prunable by default. With ``tied=True`` (the
default) the head shares the token embedding's weight, and a weight tied to an embedding is not
prunable unless embeddings are opted in (``prunelab.core.prunable``), so the default prunable set
is exactly the transformer blocks' weight matrices. With ``tied=False`` the head is its own
Linear; leave it dense with a prunable rule excluding ``head``.

Inputs. Token ids are int64; a floating tensor of whole numbers is accepted and cast (dry runs and
FLOP counting feed zeros of the parameters' dtype).

Example:
    >>> net = create("gpt", (128,), 256, layers=2, width=128, heads=4)
    >>> net(torch.zeros(3, 128, dtype=torch.long)).shape
    torch.Size([3, 128, 256])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ModelError
from prunelab.models.factory import register
from prunelab.models.options import flag, positive_int, probability


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``qkv`` projection, scaled dot-product attention, ``proj``."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        # (n, t, d) -> (n, heads, t, d / heads)
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    """``fc`` → GELU → ``proj``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio * width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """The decoder-only language model (see the module docstring).

    Args:
        vocab: vocabulary size (logits per position).
        context: the longest sequence (positions of the position embedding).
        layers, width, heads, mlp_ratio: depth, model width, attention heads (dividing
            ``width``), MLP expansion.
        tied: share the token embedding's weight with the output head.
        dropout: dropout on the embeddings, attention probabilities and residual branches.
    """

    def __init__(self, vocab: int, context: int, layers: int = 2, width: int = 128, heads: int = 4,
                 mlp_ratio: int = 4, tied: bool = True, dropout: float = 0.0):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.tok.weight
        self._init(layers)

    def _init(self, layers: int) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(".proj") else 0.02
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():
            ids = ids.long()
        if ids.dim() != 2 or ids.shape[1] > self.context:
            raise ModelError(f"gpt takes token ids of shape (batch, t) with t <= {self.context}, "
                             f"got {tuple(ids.shape)}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.tok(ids) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@register("gpt")
def _gpt(in_shape, num_classes, *, layers=2, width=128, heads=4, mlp_ratio=4, tied=True, dropout=0.0):
    """Decoder-only transformer LM (GPT-2 layout, pre-LayerNorm, SDPA causal attention).

    ``in_shape = (context,)``, ``num_classes`` = vocabulary size. Parameters for the defaults with
    context 128 and vocabulary 256 (tied): 256·128 + 128·128 (embeddings) + 2 × 198,272 (blocks:
    qkv 49,536, proj 16,512, fc 66,048, proj 65,664, two LayerNorms 512) + 256 (final LayerNorm)
    = 445,952. Multiply-accumulates per sequence of 128 tokens in the Linear layers: 128 × (2 ×
    196,608 + 32,768 for the head) = 54,525,952 (attention's own products are not counted).
    """
    if len(in_shape) != 1:
        raise ModelError(f"gpt takes in_shape (context,) of token ids, got {tuple(in_shape)}; use the "
                         "'text' data set")
    layers = positive_int("layers", layers)
    width = positive_int("width", width)
    heads = positive_int("heads", heads)
    mlp_ratio = positive_int("mlp_ratio", mlp_ratio)
    if width % heads:
        raise ModelError(f"gpt width {width} must be a multiple of heads {heads}")
    tied = flag("tied", tied)
    dropout = probability("dropout", dropout)
    return GPT(int(num_classes), int(in_shape[0]), layers, width, heads, mlp_ratio, tied, dropout)


class HFCausalLM(nn.Module):
    """A HuggingFace causal language model that takes token ids and returns the logits tensor.

    ``model`` is the HuggingFace module (``GPT2LMHeadModel``); its weights keep their HuggingFace
    names under ``model.``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.is_floating_point():
            ids = ids.long()
        return self.model(input_ids=ids).logits


@register("hf-gpt2")
def _hf_gpt2(in_shape, num_classes, *, layers=2, width=128, heads=4, mlp_ratio=4, tied=True, dropout=0.0):
    """HuggingFace ``GPT2LMHeadModel`` built from a ``GPT2Config`` (needs ``transformers``).

    The same options and the same interface as ``gpt`` (token ids in, logits per position out,
    ``in_shape=(context,)``, ``num_classes`` = vocabulary), so every method, suite and command
    that takes ``gpt`` takes it too. Its block weights are HuggingFace ``Conv1D`` layers (weights
    stored as (in, out)); ``tied=True`` ties ``lm_head`` to the token embedding, which leaves the
    blocks' weight matrices as the default prunable set, as for ``gpt``. GELU is GPT-2's tanh
    approximation and attention goes through HuggingFace's own attention code.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        raise ModelError("model 'hf-gpt2' needs the transformers package: pip install transformers") from err
    if len(in_shape) != 1:
        raise ModelError(f"hf-gpt2 takes in_shape (context,) of token ids, got {tuple(in_shape)}")
    width, heads = positive_int("width", width), positive_int("heads", heads)
    if width % heads:
        raise ModelError(f"hf-gpt2 width {width} must be a multiple of heads {heads}")
    dropout = probability("dropout", dropout)
    config = GPT2Config(vocab_size=int(num_classes), n_positions=int(in_shape[0]), n_embd=width,
                        n_layer=positive_int("layers", layers), n_head=heads,
                        n_inner=positive_int("mlp_ratio", mlp_ratio) * width, resid_pdrop=dropout,
                        embd_pdrop=dropout, attn_pdrop=dropout, tie_word_embeddings=flag("tied", tied),
                        bos_token_id=None, eos_token_id=None)
    return HFCausalLM(GPT2LMHeadModel(config))
