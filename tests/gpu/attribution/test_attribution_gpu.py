"""Attribution on a CUDA device: every method and the soft metrics run there (skipped without a GPU)."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("method", ["reagent", "norm", "gradient_shap", "integrated_gradients", "input_x_gradient",
                                    "attention", "attention_rollout", "attention_last"])
def test_sequence_task_on_cuda(method, tmp_path, monkeypatch):
    # invariant: generators, samplers, padding and captum all stay on the model's device
    from orchestrator.context import local_context
    from orchestrator.registry import get_task

    monkeypatch.setenv("INTERP_SWEEPS_CACHE", str(tmp_path))
    td = get_task("attribution.sequence")
    p = td.params(method=method, max_prompts=2, max_new_tokens=3, stride=1, max_steps=20, num_probes=3,
                  keep_top_n=2, sampler="pos")
    ctx = local_context(seed=0, device="cuda")
    ctx.setup = td.setup(p, ctx)
    rows = td.fn(p, ctx)
    assert len(rows) == 6 and all(math.isfinite(r["soft_ns"]) and math.isfinite(r["soft_nc"]) for r in rows)
