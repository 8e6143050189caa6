"""Shared model code for the task families: loading, tiny test models, architecture table, seeding, data.

- `tasks.common.models`: `load_causal_lm`, `load_encoder` (built-in tiny names, "minilm", local dirs,
  `.gguf` files, hub ids).
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
}
