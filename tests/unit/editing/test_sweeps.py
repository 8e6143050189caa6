"""The paper-scale MEMIT sweep expands (the orchestrator's own parser) into runs with the loss behaviours
of the MEMIT fork's reported runs (sarahlc888/memit compute_z.py; notes C.11)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_memit_sweep_uses_the_forks_loss_behaviours(tmp_path):
    # invariant: every val run of memit.yaml (the test stage transfers them) has the fork's anti prompts,
    # shared length normalisation and -50 early stop on; the task's defaults have them off
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec
    from tasks.editing.task import MemitParams

    val = build_plan(load_spec(ROOT / "sweeps" / "memit.yaml")).stages["val"]
    assert len(val.groups) == 18  # dataset x league; the tuner draws the searched parameters per trial
    for group in val.groups:
        params = val.validate(group.base | {k: d.low if hasattr(d, "low") else d.choices[0]
                                            for k, d in val.distributions.items()})
        assert (params["fork_anti_prompts"], params["fork_length_norm"]) == (True, True)
        assert params["fork_negative_stop"] == -50.0
    default = MemitParams()
    assert (default.fork_anti_prompts, default.fork_length_norm, default.fork_negative_stop) == (False, False, None)
