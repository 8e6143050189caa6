#!/usr/bin/env bash
# Sets up the environment, then runs the quickstart sweep offline (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/orchestrator run sweeps/quickstart.yaml "$@"
.venv/bin/orchestrator report sweeps/quickstart.yaml
