"""Sensitivity family: word sensitivity of random feature and random attention maps, and generalisation
on context modification (Bombari and Mondelli, ICML 2024)."""

TASKS = {
    "sensitivity.word_sensitivity": "tasks.sensitivity.task:word_sensitivity",
    "sensitivity.generalisation": "tasks.sensitivity.task:generalisation",
}

REPORTS = {
    "sensitivity.word_sensitivity": "tasks.sensitivity.report:report_word_sensitivity",
    "sensitivity.generalisation": "tasks.sensitivity.report:report_generalisation",
}
