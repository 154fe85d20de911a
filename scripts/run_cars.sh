#!/usr/bin/env bash
# Stanford Cars, the method's Table 1: no vanilla checkpoints are released, so the vanilla
# models are trained first from torchvision's ImageNet weights (10 epochs, decay every 15:
# lr 1e-3 VGG16 and ResNet50, 5.678e-3 InceptionV3 CAM, 5e-4 InceptionV3 Grad-CAM), then the
# sigmoid branches are fine-tuned (10 epochs, no decay: VGG16 CAM 3e-3, VGG16 Grad-CAM 1e-4,
# ResNet50 1e-4, InceptionV3 CAM 1e-4, InceptionV3 Grad-CAM 5e-3) and scored as on CUB.
# A trained vanilla model can be given as --vanilla NETWORK=PATH instead.
#
# Environment (all optional; flags given to the script override them):
#   DATA_ROOT       images under $DATA_ROOT/<dataset>              (default: dataset)
#   METADATA_ROOT   metadata under $METADATA_ROOT/<dataset>/<split> (default: metadata)
#   LOG_ROOT        experiment folders, one per backbone x family   (default: train_log)
#   VANILLA_DIR     vanilla checkpoints <DATASET>_<network>_vanilla.pth.tar (default: checkpoints)
#   PRETRAINED_DIR  torchvision's ImageNet files (default: $TORCH_HOME/hub/checkpoints)
#   GPUS, WORKERS   passed to main.py as --gpus / --workers
#   PYTHON          the interpreter                                 (default: python3)
#
# Usage: scripts/run_cars.sh [--dry_run] [--architectures vgg16,resnet50] [--methods cam]
#            [--save_overlays 8 --plots] [other run_experiments flags] [-- main.py flags]
# --dry_run checks every path, checkpoint and flag and prints the commands with the learning
# rate of every parameter group at every epoch, training nothing.  Finished steps are skipped
# when the script is run again.  "-- --replay public_code" runs them as the public code did.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
run_dataset CARS "$@"
