"""The paper-scale MEMIT sweep expands (the orchestrator's own parser) into runs with the loss behaviours
of the MEMIT fork's reported runs (sarahlc888/memit compute_z.py; notes C.11)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_memit_sweep_uses_the_forks_loss_behaviours(tmp_path):
    # invariant: every val run of memit.yaml (the test stage transfers them) has the fork's anti prompts,
    # shared length normalisation and -50 early stop on; the task's defaults have them off
    from orchestrator.stages import Sweep

    from orchestrator.spec import load_spec
    from tasks.editing.task import MemitParams

    sweep = Sweep(load_spec(ROOT / "sweeps" / "memit.yaml"), str(tmp_path))
    runs = list(sweep.plans["val"].runs())
    assert len(runs) == 18  # dataset x league; the tuner draws the searched parameters per trial
    for run in runs:
        assert (run.params["fork_anti_prompts"], run.params["fork_length_norm"]) == (True, True)
        assert run.params["fork_negative_stop"] == -50.0
    default = MemitParams()
    assert (default.fork_anti_prompts, default.fork_length_norm, default.fork_negative_stop) == (False, False, None)
