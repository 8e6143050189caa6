"""Attribution family: ReAGent and seven baselines, scored by Soft-NS / Soft-NC (Zhao and Shan 2024)."""

TASKS = {
    "attribution.analogies": "tasks.attribution.task:analogies",
    "attribution.sequence": "tasks.attribution.task:sequence",
}
