#!/usr/bin/env bash
# ImageNet-1K (ILSVRC), the method's Table 2: for VGG16, ResNet50 and InceptionV3, the CAM
# network fine-tuned and scored with CAM, the Grad-CAM network (vgg16_gradcam, ResNet50
# without the large feature map, inception_v3_gradcam) fine-tuned and scored with Grad-CAM;
# both branches (softmax = vanilla, sigmoid = ours) on the test split.  Recipes
# (docs/reproducing.md): 10 epochs, x0.1 before epochs 3, 6, 9; VGG16 CAM 3e-3, VGG16 Grad-CAM
# 1e-4, ResNet50 CAM 1e-4 (large feature map), ResNet50 Grad-CAM 5e-3, InceptionV3 5e-4.
# Vanilla models: wsolevaluation's released checkpoints; the Grad-CAM VGG16 is torchvision's
# ImageNet VGG16 itself (vgg16-397923af.pth in PRETRAINED_DIR).
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
# Usage: scripts/run_ilsvrc.sh [--dry_run] [--architectures vgg16,resnet50] [--methods cam]
#            [--save_overlays 8 --plots] [other run_experiments flags] [-- main.py flags]
# --dry_run checks every path, checkpoint and flag and prints the commands with the learning
# rate of every parameter group at every epoch, training nothing.  Finished steps are skipped
# when the script is run again.  "-- --replay public_code" runs them as the public code did.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_run_common.sh"
run_dataset ILSVRC "$@"
