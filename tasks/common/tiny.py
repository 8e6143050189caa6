"""Tiny randomly initialised models with locally trained tokenizers: offline test fixtures.

`build_tiny_causal_lm` (GPT-2 or Llama layout) and `build_tiny_encoder` (BERT) train a tokenizer on a
few KB of English (`tasks.common.corpus`, or your own text), build a 2-layer, 64-wide model with a fixed
seed and `save_pretrained` both into a directory that `from_pretrained` (and so
`tasks.common.models.load_causal_lm` / `load_encoder`) can load. Same arguments, same files: the
weights depend only on `seed` and the config, the tokenizer only on the corpus and `vocab_size`.

`tiny_model_path(name)` returns the cached directory of a built-in tiny model ("tiny-gpt2",
"tiny-llama", "tiny-bert"), building it on first use. The weights are random: the models have real
shapes and real tokenizers, not real knowledge. Tests that need a model trained to do something train
one in the test session from `build_tiny_causal_lm`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "TINY_VERSION",
    "build_tiny_causal_lm",
    "build_tiny_encoder",
    "cache_root",
    "tiny_model_path",
    "train_bpe_tokenizer",
    "train_wordpiece_tokenizer",
]

log = logging.getLogger(__name__)

# Bump when the corpus, the tokenizer recipe or the default configs change: cached builds are keyed on it.
# (2: deterministic WordPiece vocabulary for tiny-bert; v1 builds made during development may differ.)
TINY_VERSION = 2

CACHE_ENV = "INTERP_SWEEPS_CACHE"

# Special tokens. Causal LMs: one document separator used as bos and eos (as in GPT-2), plus a
# distinct pad token so that padding never looks like an end of text.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

CAUSAL_ARCHS = ("gpt2", "llama")


def _lines(corpus: str | Iterable[str] | None) -> list[str]:
    """Training text as non-empty lines: the built-in corpus, a string, or an iterable of strings."""
    if corpus is None:
        from tasks.common.corpus import corpus_lines

        return corpus_lines()
    text = corpus if isinstance(corpus, str) else "\n".join(corpus)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("corpus is empty: give some text to train the tokenizer on")
    return lines


def train_bpe_tokenizer(corpus: str | Iterable[str] | None = None, vocab_size: int = 512, model_max_length: int = 128):
    """A byte-level BPE tokenizer (GPT-2 style, no added bos) trained on `corpus`, as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_lines(corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )


def train_wordpiece_tokenizer(
    corpus: str | Iterable[str] | None = None, vocab_size: int = 512, model_max_length: int = 128
):
    """A lower-casing WordPiece tokenizer (BERT style, `[CLS] $A [SEP]`) with a vocabulary from `corpus`.

    The vocabulary is built here rather than by `tokenizers`' WordPieceTrainer, whose result depends on
    hash-map order (a different vocabulary on each run): the special tokens, every character and its
    `##` continuation (sorted), then whole words by frequency (ties alphabetical) up to `vocab_size`.
    Words outside the vocabulary fall back to characters (ASCII always included), so only words with an
    unseen non-ASCII character become [UNK]. The vocabulary may be smaller than `vocab_size` when the
    corpus has fewer distinct words (383 tokens for the built-in corpus).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(_lines(corpus), vocab_size, normalizer, pre_tokenizer)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def _wordpiece_vocab(lines: list[str], vocab_size: int, normalizer, pre_tokenizer) -> dict[str, int]:
    """Deterministic WordPiece vocabulary: specials, characters, ##characters, then frequent words."""
    import string
    from collections import Counter

    words = Counter(
        word for line in lines for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    # Lower-case ASCII is always in, so unseen English words split into characters instead of [UNK].
    ascii_chars = set(string.ascii_lowercase + string.digits + string.punctuation)
    chars = sorted({char for word in words for char in word} | ascii_chars)
    base = [*BERT_SPECIAL_TOKENS, *chars, *(f"##{char}" for char in chars)]
    if vocab_size < len(base):
        raise ValueError(
            f"vocab_size must be at least {len(base)} for this corpus (specials and characters), "
            f"got vocab_size={vocab_size}"
        )
    known = set(base)
    ranked = [word for word, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if word not in known]
    tokens = base + ranked[: vocab_size - len(base)]
    return {token: i for i, token in enumerate(tokens)}


def _causal_config(arch: str, tokenizer, overrides: dict[str, Any]):
    from transformers import GPT2Config, LlamaConfig

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        defaults = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128}
        return GPT2Config(**{**ids, **defaults, **overrides})
    if arch == "llama":
        defaults = {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 128,
        }
        return LlamaConfig(**{**ids, **defaults, **overrides})
    raise ValueError(f"arch must be one of {', '.join(CAUSAL_ARCHS)}, got arch={arch!r}")


def _seeded_model(model_cls, config, seed: int):
    """`model_cls(config)` initialised from `seed`, without disturbing the caller's global torch RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def build_tiny_causal_lm(
    path: str | os.PathLike,
    arch: str = "gpt2",
    corpus: str | Iterable[str] | None = None,
    seed: int = 0,
    vocab_size: int = 512,
    **config_overrides: Any,
) -> Path:
    """Build and save a tiny causal LM and its byte-level BPE tokenizer into `path`; return `path`.

    arch="gpt2": GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128).
    arch="llama": LlamaForCausalLM, 2 layers, hidden 64, 2 heads, intermediate 128, 128 positions.
    `config_overrides` go to the config (e.g. n_layer=4, or num_hidden_layers=4 for llama).
    The tokenizer adds no bos token; bos = eos = "<|endoftext|>", pad = "<|pad|>".
    """
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    if arch not in CAUSAL_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(CAUSAL_ARCHS)}, got arch={arch!r}")
    path = Path(path)
    max_len = config_overrides.get("n_positions", config_overrides.get("max_position_embeddings", 128))
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=vocab_size, model_max_length=max_len)
    config = _causal_config(arch, tokenizer, config_overrides)
    model_cls = GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM
    model = _seeded_model(model_cls, config, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_encoder(
    path: str | os.PathLike,
    corpus: str | Iterable[str] | None = None,
    seed: int = 0,
    vocab_size: int = 512,
    **config_overrides: Any,
) -> Path:
    """Build and save a tiny BertModel and its WordPiece tokenizer into `path`; return `path`.

    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    max_position_embeddings=128), overridable through `config_overrides`. Lower-cased WordPiece with
    [PAD] [UNK] [CLS] [SEP] [MASK]; encodes a sentence as `[CLS] ... [SEP]`. No pretraining head.
    """
    from transformers import BertConfig, BertModel

    path = Path(path)
    max_len = config_overrides.get("max_position_embeddings", 128)
    tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=vocab_size, model_max_length=max_len)
    defaults = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
    }
    config = BertConfig(
        **{"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **defaults, **config_overrides}
    )
    model = _seeded_model(BertModel, config, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Built-in names -> (builder, keyword arguments). Seed 0 and the built-in corpus throughout.
BUILTIN_TINY: dict[str, tuple[Any, dict[str, Any]]] = {
    "tiny-gpt2": (build_tiny_causal_lm, {"arch": "gpt2"}),
    "tiny-llama": (build_tiny_causal_lm, {"arch": "llama"}),
    "tiny-bert": (build_tiny_encoder, {}),
}


def cache_root() -> Path:
    """Where built-in tiny models are cached: `$INTERP_SWEEPS_CACHE/tiny` or `~/.cache/interp-sweeps/tiny`."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "interp-sweeps"
    return root / "tiny"


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file() and any(
        path.glob("*.safetensors")
    )


def tiny_model_path(name: str) -> Path:
    """The directory of built-in tiny model `name`, built on first use; safe under concurrent callers.

    Each caller that finds no complete build builds into its own temporary directory next to the
    target, then renames it into place; if another caller's build landed first, that one is kept.
    """
    if name not in BUILTIN_TINY:
        raise ValueError(f"unknown tiny model {name!r}; built-in tiny models: {', '.join(BUILTIN_TINY)}")
    builder, kwargs = BUILTIN_TINY[name]
    return cached_build(f"{name}-v{TINY_VERSION}", lambda tmp: builder(tmp, **kwargs))


def cached_build(directory: str, build: Callable[[Path], object]) -> Path:
    """`cache_root()/directory`, made by `build(tmp_dir)` on first use; safe under concurrent callers.

    Every built-in model of every family goes through here: the build writes into a private temporary
    directory next to the target, which is then renamed into place (a complete build that landed first
    is kept).
    """
    target = cache_root() / directory
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        log.info("building %s", target)
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared with other users' workers
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished build `tmp` to `target`, keeping a complete `target` that appeared meanwhile."""
    try:
        os.rename(tmp, target)
        return
    except OSError:
        if _is_complete(target):
            return  # another builder won the race; its files are equivalent to ours
    # `target` exists but is incomplete (an interrupted non-atomic copy, say): move it aside, retry once.
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    with contextlib.suppress(OSError):
        os.rename(target, stale)
    shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
