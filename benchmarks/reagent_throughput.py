"""ReAGent throughput: this project's implementation against the original's probe loop and inseq's.

    python benchmarks/reagent_throughput.py [--steps 100] [--new-tokens 4] [--threads 1] [--model tiny-gpt2]
    python benchmarks/reagent_throughput.py --model smollm2 --steps 15 --new-tokens 2 --skip-end-to-end

All attribute the same targets: each prompt of a small built-in list is extended greedily by
--new-tokens tokens and every generated token is attributed (inseq: `model.attribute(prompt,
generation_args=...)`, which generates and attributes step by step; ours: one greedy generation, then
`tasks.attribution.ops.reagent.reagent` over all targets of all prompts at once; the original's loop:
the same targets one at a time through the line-by-line port of casszhao/ReAGent in
tests/unit/attribution/test_reagent_reference.py: B probes, a probe forward and a stop-check forward
per step, full logits at every position, a vocabulary sort).
Two settings, both with keep_top_n 3, replace_ratio 0.1, 5 probes, the same coarse tag map (POS
sampler) and torch seeds:
- fixed: stop_top_k 0 (never reached), so every target runs exactly --steps probe steps: per-step cost
  (every arm still runs the stop check's forward each step);
- end to end: stop_top_k 3 (the original's tolerance), max_steps 3000: the real stopping behaviour
  (inseq and ours only: the original's loop takes minutes per target there).
Reported: seconds per target and target tokens per second for each arm (best of --repeats
alternating runs: on a shared machine other processes only ever add time), the ratios, and, in the
fixed setting, logical probe forwards per second (targets x probes x 2 x steps / time: the forwards
the original algorithm does).

inseq (0.7.1) is an optional dependency: `pip install inseq`; without it its arm is skipped. Its
ReAGent builds a POS-tag map with NLTK data that cannot be downloaded offline; this script pre-seeds
inseq's cache (a pickle of {tag: ids}, inseq's own format) with the same coarse map ours uses, inside
a temporary HOME, so nothing is written to the user's caches.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Super Mario Land is a game that developed by",
    "The capital of France is",
    "When my flight landed in Japan, I converted my currency",
    "Return a new list of the",
]


def _seed_inseq_cache(home: Path, name: str, tag_map: dict[str, list[int]]) -> None:
    for var, value in (("HOME", home), ("XDG_CACHE_HOME", home / ".cache"), ("INSEQ_HOME", home / "inseq"),
                       ("INSEQ_ARTIFACTS_CACHE", home / "inseq" / "artifacts")):
        os.environ[var] = str(value)
    cache = home / "inseq" / "artifacts" / "pos_tag_sampler_cache"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.pkl", "wb") as f:
        pickle.dump(dict(tag_map), f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-gpt2")
    ap.add_argument("--steps", type=int, default=100, help="probe steps per target in the fixed setting")
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (1: stable on shared CPUs)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; the best time of each counts")
    ap.add_argument("--skip-end-to-end", action="store_true")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="reagent-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["INTERP_SWEEPS_CACHE"] = os.environ.get("INTERP_SWEEPS_CACHE",
                                                       str(Path.home() / ".cache" / "interp-sweeps"))

    import torch

    from tasks.attribution.ops.reagent import ReagentConfig, reagent
    from tasks.attribution.ops.samplers import TagGroupSampler, build_tag_map, coarse_tag
    from tasks.common.models import load_causal_lm

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit" / "attribution"))
    from test_reagent_reference import reference_reagent

    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model)
    name = Path(str(model.config.name_or_path)).name or "bench-model"
    model.config.name_or_path = name
    tag_map = build_tag_map(tok, coarse_tag)
    inseq_map = {t: [i for i in ids if i < tok.vocab_size] for t, ids in tag_map.items()}
    inseq_map = {t: ids for t, ids in inseq_map.items() if ids}
    _seed_inseq_cache(home, name, inseq_map)
    try:
        import inseq
    except ImportError:
        inseq = None
        print("inseq is not installed (pip install inseq): its arm is skipped")
    import logging

    logging.getLogger("inseq").setLevel(logging.ERROR)
    ours_sampler = TagGroupSampler(inseq_map, len(tok))

    # the targets: greedy continuations, shared by all implementations
    work = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)[0]
        work += [(out[:pos], int(out[pos])) for pos in range(ids.shape[1], len(out))]
    n_targets = len(work)
    n_params = sum(p.numel() for p in model.parameters())
    size = f"{args.model}, {n_params / 1e6:.1f}M params" if n_params >= 1e6 else f"{args.model}, {n_params:,} params"
    print(f"model {size}; {len(PROMPTS)} prompts x {args.new_tokens} new tokens = {n_targets} targets, prefix "
          f"lengths {min(len(p) for p, _ in work)}-{max(len(p) for p, _ in work)}, torch threads {args.threads}, "
          f"inseq {version('inseq') if inseq else 'absent'}, load average {os.getloadavg()[0]:.1f}")

    def config(stop_top_k: int, max_steps: int) -> ReagentConfig:
        return ReagentConfig(keep_top_n=3, stop_top_k=stop_top_k, replace_ratio=0.1, max_steps=max_steps,
                             num_probes=5)

    def run_inseq(stop_top_k: int, max_steps: int) -> float:
        m = inseq.load_model(model, "reagent", tokenizer=tok, keep_top_n=3, stopping_condition_top_k=stop_top_k,
                             replacing_ratio=0.1, max_probe_steps=max_steps, num_probes=5)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        for prompt in PROMPTS:
            m.attribute(prompt, generation_args={"max_new_tokens": args.new_tokens, "do_sample": False},
                        show_progress=False)
        return time.perf_counter() - t0

    def run_original(stop_top_k: int, max_steps: int) -> float:
        cfg, gen = config(stop_top_k, max_steps), torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for prefix, y in work:
            reference_reagent(model, prefix, y, ours_sampler, cfg, gen)
        return time.perf_counter() - t0

    def run_ours(stop_top_k: int, max_steps: int) -> float:
        cfg, gen = config(stop_top_k, max_steps), torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        reagent(model, [p for p, _ in work], [y for _, y in work], ours_sampler, cfg, gen)
        return time.perf_counter() - t0

    settings = [("fixed", 0, args.steps)] + ([] if args.skip_end_to_end else [("end-to-end", 3, 3000)])
    for label, k, steps in settings:
        arms = {"ours": run_ours}
        if label == "fixed":
            arms["original loop"] = run_original
        if inseq is not None:
            arms["inseq"] = run_inseq
        run_ours(k, 2)  # warm-up (allocations, first-call overheads)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.repeats):  # alternate, keep the best: other processes on a shared machine only add time
            for arm, fn in arms.items():
                times[arm].append(fn(k, steps))
        best = {arm: min(ts) for arm, ts in times.items()}
        print(f"{label} (stop_top_k {k}, max_steps {steps}; {size}; best of {args.repeats}; "
              f"load average {os.getloadavg()[0]:.1f}):")
        for arm, t in best.items():
            line = (f"  {arm:>13}: {t / n_targets:7.3f} s per target, {n_targets / t:8.2f} targets/s (all: "
                    f"{', '.join(f'{x:.2f}' for x in times[arm])} s)")
            if arm != "ours":
                line += f" -> ours is {t / best['ours']:.2f}x faster ({size})"
            if label == "fixed":
                line += f" | probe forwards/s {n_targets * 5 * 2 * steps / t:,.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
