"""CounterFact-style scores of a ROME edit (Meng et al. 2022): P = exp(-mean token NLL) of the new and the
true object after each rewrite, paraphrase and neighborhood prompt, and the aggregate efficacy, paraphrase
and neighborhood scores."""

from __future__ import annotations

import math
from typing import Any


def greedy_token(model, tokenizer, text: str, device) -> str:
    """The unedited model's greedy next token after `text`, decoded."""
    import torch

    with torch.no_grad():
        ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
        return tokenizer.decode([int(model(input_ids=ids).logits[0, -1].argmax())])


def candidate_probs(model, tokenizer, prompts, request, max_length, device) -> list[tuple[float, float]]:
    """(P_new, P_true) per prompt with P = exp(-mean token NLL) of the candidate after the prompt."""
    import torch

    from tasks.common.nll import encode_example, suffix_nll

    out = []
    for _, text in prompts:
        pair = []
        for target in (request["target_new"], request["target_true"]):
            encoded = [encode_example(tokenizer, text, target, max_length)]
            with torch.no_grad():
                n, length = suffix_nll(model, encoded, device)
            pair.append(math.exp(-float(n[0]) / float(length[0])))
        out.append((pair[0], pair[1]))
    return out


def rome_aggregate(rows, update, update_norm, general_before, general_after, request, layer) -> dict[str, Any]:
    """The aggregate row of a ROME run from its prompt rows, the update and the general-text losses."""
    def score(kind: str, key: str) -> float | None:
        values = [r[key] for r in rows if r["prompt_type"] == kind]
        return sum(values) / len(values) if values else None

    rewrite = rows[0]
    neighbours = [r for r in rows if r["prompt_type"] == "neighborhood"]
    return {
        "level": "aggregate",
        "edit_subject": request["subject"],
        "target_new_text": request["target_new"],
        "target_true_text": request["target_true"],
        "edit_layer": layer,
        "efficacy_score": float(rewrite["prompt_success"]),
        "efficacy_score_before": float(rewrite["prompt_success_before"]),
        "efficacy_magnitude": rewrite["p_new_after"] - rewrite["p_true_after"],
        "paraphrase_score": score("paraphrase", "prompt_success"),
        "neighborhood_score": score("neighborhood", "prompt_success"),
        "neighborhood_score_before": score("neighborhood", "prompt_success_before"),
        "neighborhood_abs_change": (
            sum(abs(r["p_true_after"] - r["p_true_before"]) for r in neighbours) / len(neighbours)
            if neighbours else None
        ),
        "general_loss_before": general_before,
        "general_loss": general_after,
        "degradation_general": general_after / general_before - 1,
        "v_loss": update.v_loss,
        "v_steps": update.v_steps,
        "delta_norm": float((update.v_star - update.v_init).norm()),
        "update_norm": update_norm,
    }


def prompt_rows(prompts, before, after) -> list[dict[str, Any]]:
    """One row per prompt: P(new), P(true) before and after, and whether the edit wins there (the new
    object on rewrite / paraphrase prompts, the true one on neighborhood prompts)."""
    rows: list[dict[str, Any]] = []
    for (kind, text), (new_b, true_b), (new_a, true_a) in zip(prompts, before, after, strict=True):
        wants_new = kind != "neighborhood"
        rows.append(
            {
                "level": "prompt",
                "prompt_type": kind,
                "prompt_text": text,
                "p_new_before": new_b,
                "p_new_after": new_a,
                "p_true_before": true_b,
                "p_true_after": true_a,
                "prompt_success_before": (new_b > true_b) if wants_new else (true_b > new_b),
                "prompt_success": (new_a > true_a) if wants_new else (true_a > new_a),
            }
        )
    return rows
