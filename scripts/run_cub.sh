#!/usr/bin/env bash
# CUB-200-2011: fine-tune the sigmoid branch of the vanilla VGG16, ResNet50 and
# InceptionV3 CAM models for CAM and Grad-CAM, then score both branches on the test
# split.  SPEC §1 recipe: 50 epochs, lr x0.1 every 15; VGG16 5e-5, ResNet50 1e-4,
# InceptionV3 1e-4 (VGG16 Grad-CAM's lr is not published: CAM's is used).
#
# Vanilla models: wsolevaluation's released CAM checkpoints of this dataset, as
#   $VANILLA_DIR/CUB_<arch>_vanilla.pth.tar (arch: vgg16, resnet50, inception_v3;
#   VANILLA_DIR defaults to checkpoints), or each given as --vanilla ARCH=PATH.
# Environment (all optional; flags given to the script override them):
#   DATA_ROOT       images under $DATA_ROOT/<dataset>              (default: dataset)
#   METADATA_ROOT   metadata under $METADATA_ROOT/<dataset>/<split> (default: metadata)
#   LOG_ROOT        experiment folders, one per backbone x method (default: train_log)
#   GPUS, WORKERS   passed to main.py as --gpus / --workers
#   PYTHON          the interpreter                                 (default: python3)
#
# Usage: scripts/run_cub.sh [--dry_run] [--architectures vgg16,resnet50] [--methods cam]
#            [--save_overlays 8 --plots] [other run_experiments.py flags] [-- main.py flags]
# --dry_run checks every path, checkpoint and flag and prints the commands, training
# nothing.  Finished steps are skipped when the script is run again.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
run_dataset CUB "$@"
