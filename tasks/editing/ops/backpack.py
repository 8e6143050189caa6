"""Backpack language model (Hewitt, Thickstun, Manning, Liang 2023, arXiv 2305.16765), as published in
`stanfordnlp/backpack-gpt2` (its modelling file, re-written here in one module with the same parameter
names, so the published state dict loads as is).

For input tokens x_1..x_n:
- senses: every token x_j gets k sense vectors C(x_j)_l (l = 1..k, width d) from a sense network that sees
  the token alone: embedding E x_j -> LayerNorm -> one residual MLP block (no mixing across positions)
  -> an MLP whose output (k d) is cut into k vectors;  shape (batch, k, seq, d);
- contextualisation weights: a causal GPT-2 over the sequence, then per sense l a single-head attention
  score alpha[l, t, j] = softmax_j(q_l(h_t) . k_l(h_j) / sqrt(d/k)) with causal masking (j <= t);
  shape (batch, k, seq, seq);
- output: o_t = sum_l sum_j alpha[l, t, j] C(x_j)_l, logits_t = E o_t (the unembedding is the input
  embedding, tied).

`BackpackLM.forward(input_ids, attention_mask=None)` returns an object with `.logits`,
`.contextualization` and `.senses`, so the editing family's scoring code runs on it unchanged. As the
published code, the attention mask is not used: right-padded batches are exact (causal attention never
looks right), left padding is not supported.

`sense_offsets` (None by default) is the hook sense fine-tuning uses (senses.SenseOffsets): a module
mapping (input_ids, senses) -> senses, applied to the sense vectors before they are weighted.

Arch lookups (tasks.common.arch) see the contextualisation GPT-2: `config.model_type` is "gpt2" and
`base_model` is that GPT-2, so layers / MLPs / output projections are the ones the original's LoRA
(`backpack.gpt2_model.h.*.mlp.c_fc|c_proj`) and MEMIT (`...mlp.c_proj`) target.

Loading: `load_backpack(name_or_path)` reads a local directory (config.json + model.safetensors or
pytorch_model.bin) or downloads a hub repo such as `stanfordnlp/backpack-gpt2` (needs a hub; the GPT-2
tokenizer is used, as the original does). `build_tiny_backpack(...)` builds a small random one for tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

HUB_NAMES = ("stanfordnlp/backpack-gpt2",)


class BackpackConfig(GPT2Config):
    """GPT2Config plus num_senses and sense_intermediate_scale; published defaults (vocab 50264, context
    512, scale_attn_by_inverse_layer_idx). model_type stays "gpt2" (see the module docstring)."""

    def __init__(self, vocab_size=50264, num_senses=16, sense_intermediate_scale=4, n_positions=512,
                 scale_attn_by_inverse_layer_idx=True, **kwargs):
        self.num_senses = num_senses
        self.sense_intermediate_scale = sense_intermediate_scale
        super().__init__(vocab_size=vocab_size, n_positions=n_positions,
                         scale_attn_by_inverse_layer_idx=scale_attn_by_inverse_layer_idx, **kwargs)


class _MLP(nn.Module):
    """Conv1D -> activation -> Conv1D (-> dropout)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, config: BackpackConfig):
        super().__init__()
        self.c_fc = Conv1D(d_hidden, d_in)
        self.c_proj = Conv1D(d_out, d_hidden)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class _NoMixBlock(nn.Module):
    """A transformer block without attention: residual += h; h = ln_1(residual); residual += mlp(h);
    return ln_2(residual)."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        d = config.n_embd
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.mlp = _MLP(d, 4 * d, d, config)
        self.resid_dropout1 = nn.Dropout(config.resid_pdrop)
        self.resid_dropout2 = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden, residual):
        residual = self.resid_dropout1(hidden) + residual
        residual = self.resid_dropout2(self.mlp(self.ln_1(residual))) + residual
        return self.ln_2(residual)


class SenseNetwork(nn.Module):
    """Token embeddings (batch, seq, d) -> sense vectors (batch, k, seq, d); no mixing across positions."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.num_senses, self.n_embd = config.num_senses, config.n_embd
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.block = _NoMixBlock(config)
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.final_mlp = _MLP(config.n_embd, config.sense_intermediate_scale * config.n_embd,
                              config.n_embd * config.num_senses, config)

    def forward(self, embeds):
        residual = self.dropout(embeds)
        senses = self.final_mlp(self.block(self.ln(residual), residual))  # (b, s, k d)
        b, s, _ = senses.shape
        return senses.reshape(b, s, self.num_senses, self.n_embd).transpose(1, 2)  # (b, k, s, d)


class WeightNetwork(nn.Module):
    """Contextual states (batch, seq, d) -> causal weights alpha (batch, k, seq_t, seq_j), rows sum to 1."""

    def __init__(self, num_senses: int, n_embd: int):
        super().__init__()
        self.num_senses = num_senses
        self.per_sense = n_embd // num_senses
        self.c_attn = nn.Linear(n_embd, 2 * num_senses * self.per_sense)

    def forward(self, hidden):
        b, s, _ = hidden.shape
        q, k = self.c_attn(hidden).reshape(b, s, 2, self.num_senses, self.per_sense).unbind(2)  # (b, s, k, d/k)
        scores = torch.einsum("bthd,bshd->bhts", q, k / math.sqrt(self.per_sense))
        mask = torch.triu(torch.full((s, s), -10000.0, device=scores.device), 1)  # as published: -1e4, not -inf
        return torch.softmax(scores + mask.to(scores.dtype), dim=-1, dtype=q.dtype)


class BackpackModel(nn.Module):
    """gpt2_model (contextualisation), sense_network, sense_weight_net; word embeddings = gpt2_model.wte."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.num_senses = config.num_senses
        self.gpt2_model = GPT2Model(config)
        self.sense_network = SenseNetwork(config)
        self.sense_weight_net = WeightNetwork(config.num_senses, config.n_embd)

    @property
    def word_embeddings(self):
        return self.gpt2_model.wte


@dataclass
class BackpackOutput:
    logits: torch.Tensor  # (batch, seq, vocab)
    contextualization: torch.Tensor  # (batch, k, seq, seq)
    senses: torch.Tensor  # (batch, k, seq, d), after sense_offsets


class BackpackLM(nn.Module):
    """The Backpack with its (tied) LM head."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.config = config
        self.backpack = BackpackModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.sense_offsets: nn.Module | None = None
        self.backpack.gpt2_model.apply(self._init_weights)
        self.backpack.sense_network.apply(self._init_weights)
        self.backpack.sense_weight_net.apply(self._init_weights)
        self.lm_head.weight = self.backpack.word_embeddings.weight  # tied

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    @property
    def base_model(self):
        return self.backpack.gpt2_model

    @property
    def device(self):
        return next(self.parameters()).device

    def sense_vectors(self, input_ids):
        """C(x_j)_l: (batch, k, seq, d), with the sense offsets applied when set."""
        senses = self.backpack.sense_network(self.backpack.word_embeddings(input_ids))
        if self.sense_offsets is not None:
            senses = self.sense_offsets(input_ids, senses)
        return senses

    def contextualization(self, input_ids, position_ids=None):
        """alpha: (batch, k, seq_t, seq_j)."""
        hidden = self.backpack.gpt2_model(input_ids=input_ids, position_ids=position_ids).last_hidden_state
        return self.backpack.sense_weight_net(hidden)

    def logits_from(self, senses, alpha):
        """logits = E sum_l alpha_l @ senses_l: (batch, seq, vocab)."""
        hidden = torch.sum(alpha @ senses, dim=1)  # (b, k, s, s) @ (b, k, s, d) -> (b, s, d)
        return self.lm_head(hidden)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):  # peft's CAUSAL_LM wrapper asks for it
        return {"input_ids": input_ids}

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_unused) -> BackpackOutput:
        alpha = self.contextualization(input_ids, position_ids)
        senses = self.sense_vectors(input_ids)
        return BackpackOutput(self.logits_from(senses, alpha), alpha, senses)


# --------------------------------------------------------------------------------------------------
# building and loading


def build_tiny_backpack(vocab_size: int, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, num_senses: int = 4,
                        n_positions: int = 64, seed: int = 0, **config) -> BackpackLM:
    """A small random Backpack (no dropout), eval mode; the global RNG is left untouched."""
    cfg = BackpackConfig(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                         num_senses=num_senses, n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BackpackLM(cfg)
    return model.eval()


def is_backpack_dir(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and "num_senses" in json.loads(config.read_text())


def save_backpack(model: BackpackLM, path: str | Path, tokenizer=None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(model.config.to_json_string())
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(("sense_offsets", "lm_head"))}
    save_file(state, str(path / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _state_dict(directory: Path) -> dict:
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / "model.safetensors"))
    return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)


# Names the original's modules give the same tensors: its BackpackGPT2Model also registers the GPT-2
# embeddings as `word_embeddings` / `position_embeddings`, and its LM head is tied to the word embeddings.
ALIASES = {
    "backpack.word_embeddings.weight": "backpack.gpt2_model.wte.weight",
    "backpack.position_embeddings.weight": "backpack.gpt2_model.wpe.weight",
    "lm_head.weight": "backpack.gpt2_model.wte.weight",
}


def _drop_aliases(state: dict, name: str) -> dict:
    """The state dict without the original's alias names, each checked to equal the tensor it names."""
    state = dict(state)
    for alias, target in ALIASES.items():
        if alias in state and target in state:
            value = state.pop(alias)
            if not torch.equal(value, state[target]):
                raise ValueError(f"Backpack checkpoint {name}: {alias} differs from {target}, which it aliases")
    return state


def load_backpack(name_or_path: str, device: str = "cpu", dtype=None):
    """(model, tokenizer) from a local directory or a hub repo (stanfordnlp/backpack-gpt2; needs a hub).

    The published checkpoint stores `backpack.*` and (tied) `lm_head.weight`; the original's module layout
    also names the GPT-2 embeddings `backpack.word_embeddings` / `backpack.position_embeddings`: those
    aliases (and lm_head.weight) are accepted when they equal wte / wpe, refused otherwise. GPT-2
    attention buffers (attn.bias, attn.masked_bias) are ignored. A directory without a tokenizer gets the
    GPT-2 tokenizer.
    """
    from transformers import AutoTokenizer

    directory = Path(name_or_path)
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
    raw = json.loads((directory / "config.json").read_text())
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "auto_map", "model_type", "transformers_version")}
    model = BackpackLM(BackpackConfig(**raw))
    state = {k: v for k, v in _state_dict(directory).items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    state = _drop_aliases(state, name_or_path)
    state["lm_head.weight"] = state["backpack.gpt2_model.wte.weight"]  # tied to the word embeddings
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Backpack checkpoint {name_or_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError):
        tokenizer = AutoTokenizer.from_pretrained("gpt2")  # the original's choice for the Backpack
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    return model, tokenizer
