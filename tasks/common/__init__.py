"""What more than one task family uses (no family imports another family's modules; tasks/README.md).

- `tasks.common.setup`: `LMSetup` (model, tokenizer, device, memo), the one `ctx.setup` shape of every
  language-model task, and `lm_setup` (falls back to loading when `ctx.setup` is None).
- `tasks.common.models`: `load_causal_lm`, `load_encoder` (every built-in of the catalogue: the `MODELS`
  maps of the families, read by `orchestrator.registry.model_map`; local dirs, `.gguf` files, hub ids).
- `tasks.common.nll`: token alignment, suffix / token NLLs and text loss of a causal LM.
- `tasks.common.gradients`: gradient attribution methods (`GRADIENT_METHODS`); `tasks.common.lm`: forward
  helpers (last-position logits, token embeddings, eager attention, right padding).
- `tasks.common.trainable`: which parameters train (full, chosen blocks, LoRA), on a deep copy.
- `tasks.common.tokens`: where the subject sits in a tokenized prompt.
- `tasks.common.general_text`: the general text an edited model should keep predicting.
- `tasks.common.artifacts`: per-layer embedding files (written by embedding, read by sensitivity).
- `tasks.common.rows`: `uniform_rows`; `tasks.common.figures`: `pyplot`, `save_figure`.
- `tasks.common.tiny`: `build_tiny_causal_lm`, `build_tiny_encoder`, `tiny_model_path`.
- `tasks.common.arch`: which module is the embedding, the layers, the MLP, the attention, per architecture.
- `tasks.common.seeding`: `seed_everything`, `torch_generator`.
- `tasks.common.data`: `read_jsonl`, `read_text_lines`.

Nothing here is imported eagerly: this package registers no tasks and importing it costs nothing.
"""

TASKS: dict[str, str] = {}

# Built-in models this package builds or ships: name -> "module:function" returning the local directory.
MODELS = {
    "tiny-gpt2": "tasks.common.tiny:tiny_model_path",
    "tiny-llama": "tasks.common.tiny:tiny_model_path",
    "tiny-bert": "tasks.common.tiny:tiny_model_path",
    "minilm": "tasks.common.models:minilm_path",
    "smollm2": "tasks.common.models:smollm2_path",
}
