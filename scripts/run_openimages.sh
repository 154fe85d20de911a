#!/usr/bin/env bash
# OpenImages30K (PxAP), the method's Table 2: the CAM and Grad-CAM networks of VGG16,
# ResNet50 and InceptionV3, both branches, on the test split.  Recipes (docs/reproducing.md):
# 10 epochs, x0.1 before epochs 3, 6, 9; VGG16 5e-4, ResNet50 5e-4 with weight decay 5e-4 and
# no large feature map (one fine-tuning serves both families), InceptionV3 3e-4.  Masks are
# read under MASK_ROOT/OpenImages (default: DATA_ROOT).
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
# Usage: scripts/run_openimages.sh [--dry_run] [--architectures vgg16,resnet50] [--methods cam]
#            [--save_overlays 8 --plots] [other run_experiments flags] [-- main.py flags]
# --dry_run checks every path, checkpoint and flag and prints the commands with the learning
# rate of every parameter group at every epoch, training nothing.  Finished steps are skipped
# when the script is run again.  "-- --replay public_code" runs them as the public code did.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
run_dataset OpenImages "$@"
