"""ReAGent throughput: this project's implementation against inseq's, same tiny model, settings and tag map.

    python benchmarks/reagent_throughput.py [--steps 100] [--new-tokens 4] [--threads 1] [--model tiny-gpt2]

Both attribute the same targets: each prompt of a small built-in list is extended greedily by
--new-tokens tokens and every generated token is attributed (inseq: `model.attribute(prompt,
generation_args=...)`, which generates and attributes step by step; ours: one greedy generation, then
`tasks.attribution.ops.reagent.reagent` over all targets of all prompts at once).
Two settings, both with keep_top_n 3, replace_ratio 0.1, 5 probes, the same coarse tag map (POS
sampler) and torch seeds:
- fixed: stop_top_k 0 (never reached), so every target runs exactly --steps probe steps: per-step cost;
- end to end: stop_top_k 3 (the original's tolerance), max_steps 3000: the real stopping behaviour.
Reported: target tokens per second for each (best of --repeats alternating runs: on a shared machine
other processes only ever add time), their ratio, and, in the fixed setting, logical probe forwards
per second (targets x probes x 2 x steps / time: the forwards the original algorithm does).

inseq (0.7.1) is an optional dependency: `pip install inseq`. Its ReAGent builds a POS-tag map with
NLTK data that cannot be downloaded offline; this script pre-seeds inseq's cache (a pickle of
{tag: ids}, inseq's own format) with the same coarse map ours uses, inside a temporary HOME, so
nothing is written to the user's caches.
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
        sys.exit("inseq is not installed: pip install inseq (optional; only this benchmark needs it)")
    import logging

    logging.getLogger("inseq").setLevel(logging.ERROR)
    ours_sampler = TagGroupSampler(inseq_map, len(tok))

    # the targets: greedy continuations, shared by both implementations
    work = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)[0]
        work += [(out[:pos], int(out[pos])) for pos in range(ids.shape[1], len(out))]
    n_targets = len(work)
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()):,} params), {len(PROMPTS)} prompts x "
          f"{args.new_tokens} new tokens = {n_targets} targets, prefix lengths {min(len(p) for p, _ in work)}-"
          f"{max(len(p) for p, _ in work)}, torch threads {args.threads}, inseq {version('inseq')}")

    def run_inseq(stop_top_k: int, max_steps: int) -> float:
        m = inseq.load_model(model, "reagent", tokenizer=tok, keep_top_n=3, stopping_condition_top_k=stop_top_k,
                             replacing_ratio=0.1, max_probe_steps=max_steps, num_probes=5)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        for prompt in PROMPTS:
            m.attribute(prompt, generation_args={"max_new_tokens": args.new_tokens, "do_sample": False},
                        show_progress=False)
        return time.perf_counter() - t0

    def run_ours(stop_top_k: int, max_steps: int) -> float:
        cfg = ReagentConfig(keep_top_n=3, stop_top_k=stop_top_k, replace_ratio=0.1, max_steps=max_steps, num_probes=5)
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        reagent(model, [p for p, _ in work], [y for _, y in work], ours_sampler, cfg, gen)
        return time.perf_counter() - t0

    settings = [("fixed", 0, args.steps)] + ([] if args.skip_end_to_end else [("end-to-end", 3, 3000)])
    for label, k, steps in settings:
        run_ours(k, 2)  # warm-up (allocations, first-call overheads)
        times_inseq, times_ours = [], []
        for _ in range(args.repeats):  # alternate, keep the best: other processes on a shared machine only add time
            times_inseq.append(run_inseq(k, steps))
            times_ours.append(run_ours(k, steps))
        t_inseq, t_ours = min(times_inseq), min(times_ours)
        line = (f"{label:>10} (stop_top_k {k}, max_steps {steps}): inseq {n_targets / t_inseq:8.2f} targets/s "
                f"({t_inseq:.2f} s) | ours {n_targets / t_ours:8.2f} targets/s ({t_ours:.2f} s) | "
                f"ratio {t_inseq / t_ours:.1f}x (best of {args.repeats}; all: inseq "
                f"{', '.join(f'{t:.2f}' for t in times_inseq)} s, ours {', '.join(f'{t:.2f}' for t in times_ours)} s)")
        if label == "fixed":
            forwards = n_targets * 5 * 2 * steps
            line += f" | probe forwards/s: inseq {forwards / t_inseq:,.0f}, ours {forwards / t_ours:,.0f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
