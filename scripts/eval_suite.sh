#!/usr/bin/env bash
# The evaluation suite of docs/evaluation.md: every task for the five baselines side by side, then one report.
#
#   scripts/eval_suite.sh CHECKPOINT DATA_ROOT OUT [SFT_ADAPTER]
#
# CHECKPOINT   a PersonaFuse checkpoint (e.g. runs/smollm2-cpu/checkpoint)
# DATA_ROOT    the folder holding emobench/, mmlu/, gsm8k/, ... (e.g. ../shared/data)
# OUT          result JSONs, per-item records, logs and OUT/report/
# SFT_ADAPTER  optional: the plain-SFT LoRA (`personafuse train --stage sft_baseline`), evaluated on the base
#
# Runs: base (experts off), prompt (system prompt written from the routed activation), uniform gates,
# sft (one LoRA on all ideal replies) and routed. A finished result is kept, so a rerun resumes.
# Item counts are environment variables (the defaults: ~2 hours of tasks on a busy 2-core CPU with SmolLM2-135M).
set -euo pipefail
CKPT=${1:?checkpoint}; DATA=${2:?data root}; OUT=${3:?output folder}; SFT=${4:-}
PF=${PF:-personafuse}
EMOBENCH_LIMIT=${EMOBENCH_LIMIT:-40}   # per subset (EU, EA)
MMLU_LIMIT=${MMLU_LIMIT:-100}
GSM8K_LIMIT=${GSM8K_LIMIT:-10}
SAFETY_LIMIT=${SAFETY_LIMIT:-10}       # per prompt set (3 harmful + benign)
REPLY_LIMIT=${REPLY_LIMIT:-16}         # counselling and customer-service replies
EQBENCH_LIMIT=${EQBENCH_LIMIT:-5}
SEED=${SEED:-0}
CORPUS=${CORPUS:-data/seed}            # customer_service: the seed corpus (its test split) or review files
REWARD=()                              # REWARD_MODEL: a reward-model folder (else the eval trains/caches one)
[[ -n ${REWARD_MODEL:-} ]] && REWARD=(--reward-model "$REWARD_MODEL")
mkdir -p "$OUT"

run() {  # run TASK LABEL MODEL-ARGS... -- TASK-ARGS...
  local task=$1 label=$2; shift 2
  local result="$OUT/$task-$label.json"
  if [[ -f $result ]]; then echo "keep $result"; return; fi
  local started=$SECONDS
  if "$PF" eval "$task" "$@" --seed "$SEED" --out "$result" --no-progress >"$OUT/$task-$label.log" 2>&1; then
    echo "$task $label $((SECONDS - started))s" | tee -a "$OUT/times.txt"
  else
    echo "$task $label FAILED (see $OUT/$task-$label.log)" | tee -a "$OUT/times.txt"
  fi
}

declare -A MODEL=(
  [base]="--model $CKPT --mode base"
  [prompt]="--model $CKPT --mode prompt"
  [uniform]="--model $CKPT --mode uniform"
  [routed]="--model $CKPT --mode routed"
)
LABELS=(base routed prompt uniform)  # the model and its base first: a cut-short run still compares them
if [[ -n $SFT ]]; then
  BASE_NAME=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['base'])" "$CKPT/config.json")
  MODEL[sft]="--model $BASE_NAME --adapter $SFT"
  LABELS=(base routed sft prompt uniform)
fi

run_label() {  # the five short tasks of one run label
  local label=$1
  # shellcheck disable=SC2086
  {
    run emobench "$label" ${MODEL[$label]} --data "$DATA" --limit "$EMOBENCH_LIMIT"
    run mmlu "$label" ${MODEL[$label]} --data "$DATA" --limit "$MMLU_LIMIT"
    run safety "$label" ${MODEL[$label]} --data "$DATA" --limit "$SAFETY_LIMIT" --max-new-tokens 64
    run counseling "$label" ${MODEL[$label]} --data "$DATA" --limit "$REPLY_LIMIT" "${REWARD[@]}"
    run customer_service "$label" ${MODEL[$label]} --data "$CORPUS" --limit "$REPLY_LIMIT" "${REWARD[@]}"
  }
}
run_label base
run_label routed
run personality experts --model "$CKPT" --data "$DATA" --probe experts
run personality prompts --model "$CKPT" --data "$DATA" --probe prompts
for label in "${LABELS[@]:2}"; do run_label "$label"; done
for label in base routed sft; do  # generation-heavy tasks (a limit of 0 skips one): base, PersonaFuse, plain SFT
  [[ -n ${MODEL[$label]:-} ]] || continue
  # shellcheck disable=SC2086
  {
    [[ $GSM8K_LIMIT == 0 ]] || run gsm8k "$label" ${MODEL[$label]} --data "$DATA" --limit "$GSM8K_LIMIT"
    [[ $EQBENCH_LIMIT == 0 ]] || run eqbench "$label" ${MODEL[$label]} --data "$DATA" --limit "$EQBENCH_LIMIT"
  }
done

"$PF" eval report "$OUT"/*.json --out "$OUT/report"
