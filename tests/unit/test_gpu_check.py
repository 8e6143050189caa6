"""scripts/gpu_check.py, the Python part of the GPU check, on CPU with the tiny models: it runs with Ray,
optuna and captum unimportable (the GPU machine has none of them), compares modes, and joins SmolLM2's
carried parts. The inline executor's device choice is tested here too."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("scripts_gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_runs_without_ray_optuna_captum(tmp_path):
    # invariant: the inline path never imports ray or optuna; without captum its methods are left out
    code = (
        "import sys, runpy; sys.modules.update(ray=None, optuna=None, captum=None); "
        f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--model', 'tiny', '--families', 'probing,attribution', "
        f"'--out', {str(tmp_path)!r}]; runpy.run_path({str(ROOT / 'scripts' / 'gpu_check.py')!r}, run_name='__main__')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=170, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "built-in tiny models" in out and "captum no" in out and "0 failed runs" in out
    table = out[out.index("family "):]
    assert "probing      cpu-float32" in table and "attribution  cpu-bfloat16" in table
    diffs = pd.read_csv(tmp_path / "diffs.csv")
    fp32 = diffs[diffs["mode"] == "cpu-float32"]
    assert len(fp32) and (fp32["max_abs_diff"] == 0).all()  # same device and dtype: identical results
    bf16 = diffs[(diffs["mode"] == "cpu-bfloat16") & (diffs["kind"] == "float")]
    assert (bf16["max_abs_diff"] > 0).any()  # the dtype reached the models


def test_max_differences(gpu_check):
    ref = pd.DataFrame({"run_id": ["a", "a", "b"], "x": [1.25, 2.0, float("nan")], "n": [1, 2, 3],
                        "rank": [1.0, 2.0, float("nan")], "attr_seconds": [1.0, 1.0, 1.0], "p": [0.1, 0.1, 0.2]})
    other = ref.assign(x=[1.75, 2.0, float("nan")], rank=[3.0, 2.0, float("nan")], attr_seconds=[9.0, 9.0, 9.0])
    expected = {"x": ("float", 0.5), "n": ("int", 0.0), "rank": ("int", 2.0)}
    assert gpu_check.max_differences(ref, other, {"p"}) == expected
    assert gpu_check.max_differences(ref, ref.assign(x=[1.25, 2.0, 3.5]), set())["x"] == ("float", float("inf"))


def test_family_spec_and_models(gpu_check):
    models = {"causal": "/m/causal", "encoder": "/m/encoder"}
    spec = gpu_check.family_spec("attribution", models, captum=False)
    params = spec["stages"]["sequence"]["params"]
    assert params["model"] == "/m/causal"
    assert not set(params["method"]["grid"]) & set(gpu_check.CAPTUM_METHODS)
    assert gpu_check.family_spec("embedding", models, captum=True)["stages"]["embed"]["params"]["model"] == "/m/encoder"
    assert gpu_check.choose_model("tiny")[0] == gpu_check.TINY


def test_join_parts(gpu_check, tmp_path, monkeypatch):
    data = os.urandom(1000)
    carry, stash = tmp_path / "gpu_carry", tmp_path / "stash"
    (carry / "smol2").mkdir(parents=True)
    stash.mkdir()
    (stash / "m.gguf.part1").write_bytes(data[:500])  # left by an earlier device call
    (carry / "smol2" / "m.gguf.part2").write_bytes(data[500:])
    (carry / "smol2" / "m.gguf.sha256").write_text(f"{hashlib.sha256(data).hexdigest()} 2\n")
    monkeypatch.setattr(gpu_check, "CARRY_DIR", carry)
    monkeypatch.setattr(gpu_check, "STASH_DIR", stash)
    assert gpu_check.join_parts("m.gguf").read_bytes() == data
    (carry / "smol2" / "m.gguf.part2").write_bytes(data[500:][::-1])
    assert gpu_check.join_parts("m.gguf") is None  # a wrong digest: no file
    (stash / "m.gguf.part1").unlink()
    assert gpu_check.join_parts("m.gguf") is None  # a part missing


def test_inline_executor_device(monkeypatch):
    from orchestrator.execute import DEVICE_ENV, InlineExecutor
    from orchestrator.spec import Resources

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert InlineExecutor().run_device(Resources()) == "cpu"
    assert InlineExecutor(device="cuda:1").run_device(Resources()) == "cuda:1"
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert InlineExecutor().run_device(Resources()) == "cuda"
    assert InlineExecutor(device="cpu").run_device(Resources(num_gpus=1)) == "cpu"
