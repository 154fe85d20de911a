#!/usr/bin/env bash
# SYNTH, the built-in dataset, at the CPU demo's scale (python main.py): vanilla
# ResNet18 trained from scratch, its sigmoid branch fine-tuned once and scored with CAM
# and Grad-CAM, both branches, on the test split.  The data is generated on the first run.
# Use it to try the run scripts and make_tables.py end to end in minutes.
#
# Vanilla model: trained here (no checkpoint needed).
# Environment (all optional; flags given to the script override them):
#   DATA_ROOT       images under $DATA_ROOT/<dataset>              (default: dataset)
#   METADATA_ROOT   metadata under $METADATA_ROOT/<dataset>/<split> (default: metadata)
#   LOG_ROOT        experiment folders, one per backbone x method (default: train_log)
#   GPUS, WORKERS   passed to main.py as --gpus / --workers
#   PYTHON          the interpreter                                 (default: python3)
#
# Usage: scripts/run_synth.sh [--dry_run] [--architectures vgg16,resnet50] [--methods cam]
#            [--save_overlays 8 --plots] [other run_experiments.py flags] [-- main.py flags]
# --dry_run checks every path, checkpoint and flag and prints the commands, training
# nothing.  Finished steps are skipped when the script is run again.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
run_dataset SYNTH "$@"
