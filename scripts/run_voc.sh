#!/usr/bin/env bash
# PASCAL VOC 2012 seeds, ReCAM's recipe (Chen et al., CVPR 2022; its public code's
# settings, docs/reproducing.md "ReCAM"): CAM -> dual-branch -> ReCAM -> seeds -> one table.
#
# Needs VOCdevkit/VOC2012 and our metadata (scripts/prepare_voc.py, with SBD's
# train_aug list for ReCAM's 10,582 training images) and torchvision's ResNet50
# ImageNet weights (resnet50-0676ba61.pth in $TORCH_HOME/hub/checkpoints or
# --pretrained_path).  Four experiments under $ROOT, each in its own folder:
#   cam_vanilla    ResNet50 (output stride 16, bias-free head, conv1/bn1 frozen, BatchNorm
#                  statistics frozen), multi-label BCE, 5 epochs, batch 16, lr 0.1 (head 1.0),
#                  poly schedule, random long side 320-640, crop 512, flip; its SGD has
#                  momentum 1e-4 and no Nesterov (the public code's positional slip)
#   cam_b2         its sigmoid branch fine-tuned (this toolkit's method; not in ReCAM)
#   recam_vanilla  ReCAM: 4 epochs, lambda 1, backbone and head at 5e-5, fc_re at 5e-4
#   recam_b2       ReCAM with the sigmoid branch as the BCE head
# Seeds are scored on the 1,464 train images with ReCAM's test-time scales and flips,
# resized as its code resizes them (--replay recam: --seed_resize recam).
#
# Environment: VOC_ROOT (default VOCdevkit, holding VOC2012/), METADATA_ROOT
# (default metadata), ROOT (default train_log/recam_voc), PYTHON (default python3).
# Flags after the script name go to every main.py command (e.g. --gpus 0 --workers 8).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
ROOT=${ROOT:-train_log/recam_voc}
VOC_ROOT=${VOC_ROOT:-VOCdevkit}
METADATA_ROOT=${METADATA_ROOT:-metadata}
COMMON=(--dataset_name VOC2012 --data_root "$VOC_ROOT" --metadata_root "$METADATA_ROOT"
        --architecture resnet50 --large_feature_map FALSE --head_bias FALSE
        --freeze conv1,bn1 --frozen_bn --train_augment recam --resize_long 320 640
        --crop_size 512 --batch_size 16 --weight_decay 1e-4 --lr_schedule poly
        --momentum 1e-4 --nesterov FALSE --split train --method cam
        --tta_scales 1.0,0.5,1.5,2.0 --seed_threshold 0.21 --replay recam --root "$ROOT")
$PYTHON main.py "${COMMON[@]}" --experiment_name cam_vanilla --model_structure vanilla \
    --pretrained --epochs 5 --lr 0.1 --lr_classifier_ratio 10 --lr_groups head "$@"
$PYTHON main.py "${COMMON[@]}" --experiment_name cam_b2 --model_structure b2 \
    --ft_ckpt "$ROOT/cam_vanilla/last_checkpoint.pth.tar" --epochs 2 --lr 0.01 \
    --lr_classifier_ratio 1 --cam_branch softmax,sigmoid "$@"
$PYTHON main.py "${COMMON[@]}" --experiment_name recam_vanilla --model_structure vanilla \
    --ft_ckpt "$ROOT/cam_vanilla/last_checkpoint.pth.tar" --recam --recam_trains all \
    --recam_weight 1.0 --epochs 4 --lr 5e-4 --cam_branch softmax,recam "$@"
$PYTHON main.py "${COMMON[@]}" --experiment_name recam_b2 --model_structure b2 \
    --ft_ckpt "$ROOT/cam_b2/last_checkpoint.pth.tar" --recam --recam_trains all \
    --recam_weight 1.0 --epochs 4 --lr 5e-4 --cam_branch sigmoid,recam "$@"
$PYTHON scripts/recam_table.py "$ROOT" --split train
