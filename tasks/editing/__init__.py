"""Model editing: canonical-examples fine-tuning (Hewitt et al. 2024), ROME edits and causal tracing
(Meng et al. 2022). Cheap to import: the task modules load torch lazily."""

TASKS = {
    "editing.finetune": "tasks.editing.task:finetune",
    "editing.rome": "tasks.editing.task:rome_edit",
    "editing.causal_trace": "tasks.editing.task:causal_trace",
}

REPORTS = {
    "editing.finetune": "tasks.editing.report:report_finetune",
    "editing.causal_trace": "tasks.editing.report:report_trace",
    "editing.rome": "tasks.editing.report:report_rome",
}
