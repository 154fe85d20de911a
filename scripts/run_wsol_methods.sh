#!/usr/bin/env bash
# wsolevaluation's main table x {vanilla, + sigmoid branch}: for each WSOL method (default: all
# six, cam has acol spg adl cutmix; docs/method.md), the vanilla model of every backbone trained
# with the method (ACoL, SPG and ADL: their own networks, on vgg16, resnet50 and inception_v3
# only), its sigmoid branch fine-tuned with the same method, and both branches scored in one pass
# (softmax = the method's row, sigmoid = "+ sigmoid branch").
#
# Hyperparameters: the dataset's published fine-tuning recipe (docs/reproducing.md); the vanilla
# models use the dataset's vanilla recipe where one is published (Stanford Cars, SYNTH), else lr
# 1e-3 stands in: wsolevaluation searched each method's lr and publishes few of them (its
# config.py default is 0.01); each such step's "# not published" note says so.  Every method keeps
# wsolevaluation's flag defaults (--has_grid_size 4 --has_drop_rate 0.5, --acol_threshold 0.7,
# --spg_threshold_* 0.7/0.01 0.5/0.05 0.7/0.1, --adl_drop_rate 0.75 --adl_threshold 0.9,
# --cutmix_beta 1.0 --cutmix_prob 1.0); pass others after "--".
#
# Usage: scripts/run_wsol_methods.sh DATASET [--dry_run] [--architectures resnet50]
#            [other run_experiments flags] [-- main.py flags]
# Environment: as scripts/run_cub.sh (DATA_ROOT, METADATA_ROOT, LOG_ROOT, PRETRAINED_DIR,
# GPUS, WORKERS, PYTHON), and WSOL_METHODS (default "cam has acol spg adl cutmix"; SYNTH's
# default ResNet18 has no ACoL, SPG or ADL network: WSOL_METHODS="cam has cutmix" there, or
# --architectures resnet50, whose networks all start from one ResNet50 trained on SYNTH, the
# stand-in for ImageNet's weights).
# Then: python scripts/make_tables.py --experiments "$LOG_ROOT"/* --wsol_table
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: scripts/run_wsol_methods.sh DATASET [run_experiments flags] [-- main.py flags]" >&2
    exit 2
fi
dataset="$1"
shift
for method in ${WSOL_METHODS:-cam has acol spg adl cutmix}; do
    run_dataset "$dataset" --wsol_method "$method" --methods cam "$@"
done
