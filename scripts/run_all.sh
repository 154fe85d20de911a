#!/usr/bin/env bash
# Every published experiment: ILSVRC, CUB, OpenImages and Stanford Cars (see each
# scripts/run_<dataset>.sh for its recipe and the environment variables it reads),
# then the tables (scripts/make_tables.py) under ${TABLES:-tables}.
#
# Usage: scripts/run_all.sh [--dry_run] [flags for every dataset] [-- main.py flags]
# A dry run checks all four datasets and reports every problem before failing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
status=0
for dataset in ilsvrc cub openimages cars; do
    echo "== $dataset"
    bash "$here/run_$dataset.sh" "$@" || status=$?
    if [[ $status -ne 0 && " $* " != *" --dry_run "* ]]; then
        exit "$status"
    fi
done
if [[ " $* " != *" --dry_run "* ]]; then
    "${PYTHON:-python3}" "$here/make_tables.py" --experiments "${LOG_ROOT:-train_log}"/* \
        --output "${TABLES:-tables}"
fi
exit "$status"
