"""The on-disk layout of `embedding.hidden_states` artifacts, and readers for the stages that consume them.

One safetensors file per layer, `layer{L}.safetensors`, in the run's artifact directory:
  hidden          (N, T, width) float32 or float16   hidden_states[L] for every token position
  input_ids       (N, T) int64                        right-padded with the tokenizer's pad id
  attention_mask  (N, T) int64
  labels          (N,) int64                          +1 / -1
  is_test         (N,) int64                          0 = train, 1 = test
  n_computed      (N,) int64                          rows [0, n_computed) hold model outputs ([PAD]
                                                      positions included); rows beyond are zeros
plus `texts.jsonl` (index, split, label, text) and `meta.json`. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TENSORS = ("hidden", "input_ids", "attention_mask", "labels", "is_test", "n_computed")


def layer_file(layer: int) -> str:
    return f"layer{layer}.safetensors"


def write_layer(directory: Path, layer: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write one layer's file atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    missing = set(TENSORS) - set(tensors)
    if missing:
        raise ValueError(f"layer file needs tensors {sorted(missing)}")
    path = Path(directory) / layer_file(layer)
    tmp = path.with_suffix(".tmp")
    save_file({k: tensors[k].contiguous() for k in TENSORS}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: Any, lines: bool = False) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        if lines:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in obj)
        else:
            json.dump(obj, handle, indent=1)
    os.replace(tmp, path)


@dataclass
class EmbeddingFile:
    """One layer file, opened lazily: the small per-sample tensors are read at once, the hidden states
    slice by slice (a sensitivity run reads a few samples' first n rows and d columns only)."""

    path: Path
    labels: torch.Tensor  # (N,)
    is_test: torch.Tensor  # (N,)
    n_computed: torch.Tensor  # (N,)
    n_real: torch.Tensor  # (N,) real tokens (attention mask sum)
    shape: tuple[int, int, int]  # (N, T, width)
    metadata: dict[str, str]

    @classmethod
    def open(cls, path: Path) -> EmbeddingFile:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shape = tuple(f.get_slice("hidden").get_shape())
            return cls(
                path=Path(path), labels=f.get_tensor("labels"), is_test=f.get_tensor("is_test"),
                n_computed=f.get_tensor("n_computed"), n_real=f.get_tensor("attention_mask").sum(dim=1),
                shape=shape, metadata=f.metadata() or {},  # type: ignore[arg-type]
            )

    def eligible(self, n: int, rows: str = "all", split: str = "all") -> torch.Tensor:
        """Indices of samples whose first n rows are usable: rows="all" needs them computed (the original
        takes the first n rows, [SEP]/[PAD] included); rows="real" needs n real tokens."""
        ok = (self.n_computed if rows == "all" else self.n_real) >= n
        if split != "all":
            ok &= self.is_test == (1 if split == "test" else 0)
        return torch.nonzero(ok).flatten()

    def read(self, indices: list[int], n: int, d: int) -> torch.Tensor:
        """hidden[indices, :n, :d] as float64: (len(indices), n, d)."""
        from safetensors import safe_open

        _N, T, width = self.shape
        if n > T or d > width:
            raise ValueError(f"{self.path.name} holds T={T} positions of width {width}; asked n={n}, d={d}")
        with safe_open(str(self.path), framework="pt") as f:
            part = f.get_slice("hidden")
            return torch.stack([part[i : i + 1, :n, :d][0] for i in indices]).to(torch.float64)


def find_layer(upstream: list[Any], layer: int, stage: str) -> EmbeddingFile:
    """The single upstream run (a `RunContext.upstream` entry) holding `layer{layer}.safetensors`."""
    found = [u for u in upstream if (Path(u.artifact_dir) / layer_file(layer)).is_file()]
    if len(found) != 1:
        held = {u.run_id: sorted(p.name for p in Path(u.artifact_dir).glob("layer*.safetensors")) for u in upstream}
        raise LookupError(
            f"expected exactly one upstream run of stage '{stage}' holding {layer_file(layer)}, found "
            f"{len(found)} among {len(upstream)} matching run(s): {held}"
        )
    return EmbeddingFile.open(Path(found[0].artifact_dir) / layer_file(layer))
