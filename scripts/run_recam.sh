#!/usr/bin/env bash
# CAM -> ReCAM -> seeds -> one table, on the built-in multi-label SYNTH_ML (CPU, minutes).
#
# Four experiments, each in its own folder under $ROOT (ReCAM's public code writes its
# ReCAMs over its CAMs in one folder; here nothing is overwritten):
#   cam_vanilla    a ResNet18 multi-label classifier (BCE head) trained from scratch
#   cam_b2         its sigmoid branch fine-tuned (the dual-branch method)
#   recam_vanilla  ReCAM on the vanilla model: mask from its head
#   recam_b2       ReCAM on the dual-branch model: mask from the sigmoid branch
# ReCAM trains as ReCAM does (--recam_trains all: backbone and BCE head at 0.1 x lr,
# fc_re at lr, BatchNorm statistics frozen); the recam maps use W2 * W1.  Seeds are
# scored on the test split (background score 0.21 and the sweep), and
# scripts/recam_table.py prints the table.
#
# Environment: ROOT (default train_log/recam_synth), PYTHON (default python3).
# Flags after the script name go to every main.py command (e.g. --tta_scales 1.0,0.5,1.5,2.0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
ROOT=${ROOT:-train_log/recam_synth}
COMMON=(--dataset_name SYNTH_ML --architecture resnet18 --large_feature_map TRUE
        --resize_size 72 --crop_size 64 --batch_size 16 --workers 1 --seed 0
        --split test --method cam,gradcam --root "$ROOT" --override_cache)
$PYTHON main.py "${COMMON[@]}" --experiment_name cam_vanilla --model_structure vanilla \
    --epochs 4 --lr 0.05 --lr_classifier_ratio 1 --lr_decay_frequency 3 "$@"
$PYTHON main.py "${COMMON[@]}" --experiment_name cam_b2 --model_structure b2 \
    --ft_ckpt "$ROOT/cam_vanilla/last_checkpoint.pth.tar" --epochs 2 --lr 0.05 \
    --lr_decay_frequency 3 --cam_branch softmax,sigmoid "$@"
$PYTHON main.py "${COMMON[@]}" --experiment_name recam_vanilla --model_structure vanilla \
    --ft_ckpt "$ROOT/cam_vanilla/last_checkpoint.pth.tar" --recam --recam_trains all \
    --epochs 4 --lr 0.02 --lr_classifier_ratio 1 --lr_decay_frequency 10 \
    --cam_branch softmax,recam "$@"
$PYTHON main.py "${COMMON[@]}" --experiment_name recam_b2 --model_structure b2 \
    --ft_ckpt "$ROOT/cam_b2/last_checkpoint.pth.tar" --recam --recam_trains all \
    --epochs 4 --lr 0.02 --lr_classifier_ratio 1 --lr_decay_frequency 10 \
    --cam_branch sigmoid,recam "$@"
$PYTHON scripts/recam_table.py "$ROOT" --split test
