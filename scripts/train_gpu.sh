#!/usr/bin/env bash
# The published recipe on DIV2K, on one GPU or several (DDP through torchrun), unchanged:
#
#   bash scripts/train_gpu.sh /data/DIV2K                      # one GPU: agileir-s x2
#   NGPU=8 bash scripts/train_gpu.sh /data/DIV2K               # 8 GPUs, global batch 64 split 8 ways
#   CONFIG=configs/swinir-s_x2.yaml bash scripts/train_gpu.sh /data/DIV2K   # the SwinIR-S arm
#   bash scripts/train_gpu.sh /data/DIV2K train.iterations=100000           # any KEY=VALUE override
#
# DIV2K folder: DIV2K_train_HR/0001.png ... and DIV2K_train_LR_bicubic/X2/0001x2.png ... (the
# official archives unpacked). Step 1 decodes both once into memory-mapped .npy arrays
# (agileir prepare; resumable, ~8 GB for HR + X2..X4), so no worker decodes a PNG per patch.
# Step 2 trains with bf16 autocast on the lean (recompute) attention path, resuming from the
# run's latest checkpoint if there is one: rerun the same command after an interruption.
set -euo pipefail
DIV2K=${1:?usage: scripts/train_gpu.sh DIV2K_FOLDER [KEY=VALUE ...]}
shift
CONFIG=${CONFIG:-configs/agileir-s_x2.yaml}
NGPU=${NGPU:-1}
PREPARED=${PREPARED:-$DIV2K/prepared}
AGILEIR=${AGILEIR:-agileir}

$AGILEIR prepare "$DIV2K/DIV2K_train_HR" "$PREPARED/DIV2K_train_HR"
$AGILEIR prepare "$DIV2K/DIV2K_train_LR_bicubic" "$PREPARED/DIV2K_train_LR_bicubic"

args=(train --config "$CONFIG" --resume
      "data.train.hr_dir=$PREPARED/DIV2K_train_HR" "data.train.lr_dir=$PREPARED/DIV2K_train_LR_bicubic"
      data.train.cache=false train.precision=bf16 model.attention_impl=recompute "$@")
if [ "$NGPU" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node "$NGPU" -m agileir "${args[@]}"
else
  exec $AGILEIR "${args[@]}"
fi
