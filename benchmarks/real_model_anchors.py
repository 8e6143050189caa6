"""A real model against the anchors: 100 runs of next-token statistics on SmolLM2-135M, four ways.

    ../.venv/bin/python real_model_anchors.py [--runs 100] [--model smollm2] [--script-runs 5] [--skip-tune]

Each run is `diversity.next_token` (perplexity, entropy, confidence, ...) over one document: 100
documents, each a pair of the built-in general and diversity texts (about 50 tokens), one .txt file
per run. The arms, each a fresh process timed from outside (interpreter, imports, model loads, Ray
start-up all included):
- the orchestrator: `orchestrator run` of a spec whose `dataset` is a grid over the 100 files (local
  Ray, warm-model actors, one thread per worker, Parquet rows);
- the originals' way: a bash loop over a script, a fresh Python process per run (imports and model load
  each time), measured on `--script-runs` runs and extrapolated;
- Ray Tune: the same function (load the model, compute) as a function trainable over a grid search of
  the files, `reuse_actors=True` (imports are paid once per actor, the model load once per trial, as a
  trainable written from the original script does);
- the floor: one plain Python loop that loads the model once and runs the 100 documents (torch's
  default threads).
Printed: each arm's wall, the ratios against the orchestrator, and the largest difference between the
orchestrator's and the floor's perplexities (the same function must give the same numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "HF_HUB_OFFLINE": "1"}

ONE_RUN = """\
from orchestrator.context import local_context
from orchestrator.registry import get_task

task = get_task("diversity.next_token")
ctx = local_context()


def run(model: str, path: str, load: bool) -> dict:
    params = task.params(model=model, dataset=path, batch_size=4)
    if load:
        ctx.setup = task.setup(params, ctx)
    return task.fn(params, ctx)[-1]  # the model-level row
"""

LOOP = ONE_RUN + """
import json, sys
model, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [run(model, path, load=i == 0) for i, path in enumerate(paths)]
json.dump({path: row["perplexity"] for path, row in zip(paths, rows)}, open(out, "w"))
"""

SCRIPT = ONE_RUN + """
import sys
run(sys.argv[1], sys.argv[2], load=True)
"""

TUNE = ONE_RUN + """
import json, sys, tempfile
import ray
from ray import tune

model, paths = sys.argv[1], json.loads(sys.argv[2])
ray.init(include_dashboard=False, logging_level="ERROR")


def trainable(config: dict) -> None:
    tune.report({"perplexity": run(model, config["dataset"], load=True)["perplexity"]})


tuner = tune.Tuner(trainable, param_space={"dataset": tune.grid_search(paths)},
                   tune_config=tune.TuneConfig(reuse_actors=True),
                   run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="tune-"), name="real", verbose=0))
results = tuner.fit()
assert results.num_errors == 0 and len(results) == len(paths), (results.num_errors, len(results))
ray.shutdown()
"""


def documents(n: int) -> list[str]:
    from tasks.common.general_text import general_texts
    from tasks.diversity.data import BUILTIN_DOCUMENTS

    texts = [*general_texts(), *BUILTIN_DOCUMENTS]
    pairs = [(i % len(texts), (i % len(texts) + 1 + i // len(texts)) % len(texts)) for i in range(n)]
    docs = [f"{texts[a]} {texts[b]}" for a, b in pairs]
    assert len(set(docs)) == n, "documents repeat: fewer distinct pairs than runs"
    return docs


def timed(args: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise SystemExit(f"{args[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--script-runs", type=int, default=5)
    parser.add_argument("--skip-tune", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tasks.common.models import load_causal_lm

    model, tokenizer = load_causal_lm(args.model)  # builds the cached checkpoint on first use
    n_params = sum(p.numel() for p in model.parameters())
    folder = Path(tempfile.mkdtemp(prefix="real-anchors-"))
    paths = []
    for i, doc in enumerate(documents(args.runs)):
        paths.append(str(folder / f"doc_{i:03d}.txt"))
        Path(paths[-1]).write_text(doc + "\n")
    tokens = [len(tokenizer(Path(p).read_text().strip()).input_ids) for p in paths]
    del model
    spec = folder / "spec.yaml"
    spec.write_text(json.dumps({"name": "real-anchors", "stages": {"next_token": {
        "task": "diversity.next_token",
        "params": {"model": args.model, "batch_size": 4, "dataset": {"grid": paths}}}}}))
    print(f"{args.runs} runs of diversity.next_token on {args.model} ({n_params / 1e6:.1f}M params), one document "
          f"each ({min(tokens)}-{max(tokens)} tokens); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
          flush=True)

    walls: dict[str, float] = {}
    results = folder / "results"
    walls["orchestrator"] = timed([sys.executable, "-m", "orchestrator", "run", str(spec), "--results", str(results)],
                                  cwd=folder)
    print(f"  orchestrator run: {walls['orchestrator']:.1f} s", flush=True)
    floor_out = folder / "floor.json"
    walls["floor"] = timed([sys.executable, "-c", LOOP, args.model, str(floor_out), *paths], cwd=folder)
    print(f"  plain loop, model loaded once (the floor): {walls['floor']:.1f} s", flush=True)
    script = folder / "one_run.py"
    script.write_text(SCRIPT)
    loop = f'for f in {" ".join(paths[:args.script_runs])}; do "{sys.executable}" {script} {args.model} "$f"; done'
    per_process = timed(["bash", "-c", loop], cwd=folder) / args.script_runs
    walls["bash loop"] = per_process * args.runs
    print(f"  bash loop, a fresh process per run: {per_process:.2f} s per run, {walls['bash loop']:.0f} s for "
          f"{args.runs} (extrapolated from {args.script_runs})", flush=True)
    if not args.skip_tune:
        walls["ray tune"] = timed([sys.executable, "-c", TUNE, args.model, json.dumps(paths)], cwd=folder)
        print(f"  ray.tune.Tuner (function trainable, reuse_actors=True): {walls['ray tune']:.1f} s", flush=True)

    from orchestrator.store import load_results

    rows = load_results(str(results), "real-anchors", "next_token")
    ours = rows[rows.level == "model"].set_index("dataset").perplexity
    floor = json.loads(floor_out.read_text())
    assert len(ours) == args.runs, f"{len(ours)} model rows stored, not {args.runs}"
    worst = max(abs(ours[p] - floor[p]) / floor[p] for p in paths)
    size = f"{args.model}, {n_params / 1e6:.1f}M params"
    print(f"results ({size}; load average now {os.getloadavg()[0]:.1f}); perplexities: orchestrator and floor "
          f"agree to a relative {worst:.1e}")
    targets = {"bash loop": "target >= 30x", "ray tune": "target >= 1.5x"}
    for arm in ("bash loop", "ray tune"):
        if arm in walls:
            print(f"  orchestrator is {walls[arm] / walls['orchestrator']:.1f}x faster than the {arm} ({targets[arm]})")
    print(f"  orchestrator / floor: {walls['orchestrator'] / walls['floor']:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
