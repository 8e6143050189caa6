"""Diversity family: next-token entropy and perplexity, and output diversity across temperatures.

After O'Mahony et al. 2024, "Attributing Mode Collapse in the Fine-Tuning of Large Language Models".
"""

TASKS = {
    "diversity.finetune": "tasks.diversity.task:finetune",
    "diversity.next_token": "tasks.diversity.task:next_token",
    "diversity.completions": "tasks.diversity.task:completions",
    "diversity.output_diversity": "tasks.diversity.task:output_diversity",
}

REPORTS = {
    "diversity.next_token": "tasks.diversity.report:report_next_token",
    "diversity.output_diversity": "tasks.diversity.report:report_output_diversity",
}

# Built-in models (tasks.diversity.models): name -> the function that builds it and returns its directory.
MODELS = {name: "tasks.diversity.models:model_path" for name in (
    "tiny-gpt2-pretrained", "tiny-llama-pretrained", "tiny-gpt2-narrow", "tiny-llama-narrow")}
