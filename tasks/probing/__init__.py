"""Probing experiments around factual recall, run next to causal tracing and ROME (Meng et al. 2022).

Planned experiments rather than a published codebase; each task's docstring names the one it runs:
- "Embedding swap" (`probing.embedding_swap`): swap the input embeddings of two tokens (" cat" / " dog")
  in chosen tokenisation variants (byte-level BPE: " dog" and "dog" are different tokens) and ask
  questions about each; does a swap matter only for tokens present in the input?
- "Targeted noise" (`probing.subject_noise`): noise on one subject's embedding at a time, as causal
  tracing corrupts but without restoring; which answers does the model give?
- "Input saliency" (`probing.saliency`): gradient of the answer w.r.t. each input embedding (times the
  embedding, summed over the embedding dimension) and integrated gradients with BOS / EOS baselines,
  alone and with the swap.
- "Fact injection", "Freeze / unfreeze", "Afterwards" (`probing.fact_injection`): fine-tune on a
  sentence stating a never-seen fact one update at a time, recording per-layer gradient and
  weight-change norms and whether a question about it is answered, optionally with layers frozen; then
  the loss on general text against the unedited model.
Cheap to import: the task modules load torch lazily."""

TASKS = {
    "probing.embedding_swap": "tasks.probing.task:embedding_swap",
    "probing.subject_noise": "tasks.probing.task:subject_noise",
    "probing.saliency": "tasks.probing.task:saliency",
    "probing.fact_injection": "tasks.probing.task:fact_injection",
}

REPORTS = {
    "probing.embedding_swap": "tasks.probing.report:report_swap",
    "probing.fact_injection": "tasks.probing.report:report_injection",
    "probing.subject_noise": "tasks.probing.report:report_noise",
}
