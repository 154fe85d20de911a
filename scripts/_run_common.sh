# Shared by scripts/run_<dataset>.sh (sourced, not run).  Turns the
# environment variables the run scripts document into flags of
# scripts/run_experiments.py; the caller's own flags come last and win.
run_dataset() {
    local dataset="$1"
    shift
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    local args=(--dataset "$dataset"
                --data_root "${DATA_ROOT:-dataset}"
                --metadata_root "${METADATA_ROOT:-metadata}"
                --log_root "${LOG_ROOT:-train_log}"
                --vanilla_dir "${VANILLA_DIR:-checkpoints}")
    if [[ -n "${MASK_ROOT:-}" ]]; then args+=(--mask_root "$MASK_ROOT"); fi
    if [[ -n "${PRETRAINED_DIR:-}" ]]; then args+=(--pretrained_dir "$PRETRAINED_DIR"); fi
    if [[ -n "${GPUS:-}" ]]; then args+=(--gpus "$GPUS"); fi
    if [[ -n "${WORKERS:-}" ]]; then args+=(--workers "$WORKERS"); fi
    # run_experiments reads main.py's flags (config.py), at the repository's top level.
    PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}" \
        "${PYTHON:-python3}" -m scripts.run_experiments "${args[@]}" "$@"
}
