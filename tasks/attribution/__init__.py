"""Attribution family: ReAGent and seven baselines, scored by Soft-NS / Soft-NC (Zhao and Shan 2024)."""

TASKS = {
    "attribution.analogies": "tasks.attribution.task:analogies",
    "attribution.sequence": "tasks.attribution.task:sequence",
    "attribution.planted": "tasks.attribution.task:planted_copy",
}

REPORTS = {
    "attribution.analogies": "tasks.attribution.report:report_rows",
    "attribution.sequence": "tasks.attribution.report:report_rows",
    "attribution.planted": "tasks.attribution.report:report_rows",
}

# Built-in models: name -> the function that builds it and returns its directory.
MODELS = {"tiny-gpt2-copy": "tasks.attribution.planted:copy_model_path"}
