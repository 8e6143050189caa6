"""Model editing: canonical-examples fine-tuning (Hewitt et al. 2024), ROME edits and causal tracing
(Meng et al. 2022), Backpack sense fine-tuning, the Backpack + larger-LM ensemble and MEMIT (Hewitt et al.
2024). Cheap to import: the task modules load torch lazily."""

TASKS = {
    "editing.finetune": "tasks.editing.task:finetune",
    "editing.rome": "tasks.editing.task:rome_edit",
    "editing.causal_trace": "tasks.editing.task:causal_trace",
    "editing.ensemble": "tasks.editing.task:ensemble",
    "editing.memit": "tasks.editing.task:memit_edit",
}

REPORTS = {
    "editing.finetune": "tasks.editing.report:report_finetune",
    "editing.causal_trace": "tasks.editing.report:report_trace",
    "editing.rome": "tasks.editing.report:report_rome",
    "editing.ensemble": "tasks.editing.report:report_finetune",
    "editing.memit": "tasks.editing.report:report_finetune",
}

# Built-in models (tasks.editing.models): name -> the function that builds it and returns its directory.
MODELS = {name: "tasks.editing.models:model_path" for name in (
    "tiny-gpt2-facts", "tiny-llama-facts", "tiny-gpt2-corpus", "tiny-llama-corpus", "tiny-backpack")}
