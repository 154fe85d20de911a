#!/usr/bin/env bash
# Stanford Cars: no vanilla checkpoints are released, so the vanilla VGG16, ResNet50
# and InceptionV3 CAM models are trained first from torchvision's ImageNet weights
# (wsolevaluation's CUB CAM settings: 50 epochs, lr x0.1 every 15), then the sigmoid
# branch is fine-tuned (SPEC §1: 10 epochs; CUB's learning rates) for CAM and
# Grad-CAM and both branches are scored on the test split.
#
# ImageNet weights: torchvision's files (vgg16-*.pth, resnet50-*.pth,
#   inception_v3_google-*.pth) in $PRETRAINED_DIR (default: $TORCH_HOME/hub/checkpoints,
#   i.e. ~/.cache/torch/hub/checkpoints), or each given as --pretrained ARCH=PATH.
#   An already trained vanilla model can be given as --vanilla ARCH=PATH instead.
# Environment (all optional; flags given to the script override them):
#   DATA_ROOT       images under $DATA_ROOT/<dataset>              (default: dataset)
#   METADATA_ROOT   metadata under $METADATA_ROOT/<dataset>/<split> (default: metadata)
#   LOG_ROOT        experiment folders, one per backbone x method (default: train_log)
#   GPUS, WORKERS   passed to main.py as --gpus / --workers
#   PYTHON          the interpreter                                 (default: python3)
#
# Usage: scripts/run_cars.sh [--dry_run] [--architectures vgg16,resnet50] [--methods cam]
#            [--save_overlays 8 --plots] [other run_experiments.py flags] [-- main.py flags]
# --dry_run checks every path, checkpoint and flag and prints the commands, training
# nothing.  Finished steps are skipped when the script is run again.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
run_dataset CARS "$@"
