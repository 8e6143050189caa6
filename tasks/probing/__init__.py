"""Probing experiments around factual recall (seeds.md D.8): embedding swaps, subject noise, input
saliency and step-by-step fact injection. Cheap to import: the task modules load torch lazily."""

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
