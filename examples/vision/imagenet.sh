#!/usr/bin/env bash
# ImageNet-1K recipe of the paper (Sec. 5, Table 2A; App. "Training details"):
#   teachers: ResNet-50, alpha in {0, 0.1}, 90 epochs, lr 0.1 /10 every 30 epochs, batch 256, SGD 0.9
#   students: ResNet-18 distilled (beta = 1) at T in {1, 2, 3, 64}, 200 epochs, lr 0.1 /10 every 80 epochs
# then penultimate features for the diffusion index (Eq. 1) and the projection plots (App. F).
#
#   DATA=/datasets/imagenet OUT=runs/imagenet bash examples/vision/imagenet.sh
#   DRY_RUN=1 bash examples/vision/imagenet.sh     # print the commands only (e.g. for a scheduler)
#
# DATA holds train/ and val/ with one folder per wnid (torchvision ImageFolder layout).
# 8 GPUs x 32 images = batch 256. Every run resumes from its checkpoint.pth if it was interrupted.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-/datasets/imagenet}
OUT=${OUT:-runs/imagenet}
NPROC=${NPROC:-8}
SEEDS=${SEEDS:-"0"}
ALPHAS=${ALPHAS:-"0.0 0.1"}
TEMPS=${TEMPS:-"1 2 3 64"}
WORKERS=${WORKERS:-8}

run() {
    echo "+ $*"
    if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

train() {  # train OUTPUT_DIR ARGS... (adds --resume when a checkpoint exists; skips finished runs)
    local out=$1; shift
    if [ -f "$out/result.json" ]; then echo "= $out done"; return; fi
    local resume=()
    if [ -f "$out/checkpoint.pth" ]; then resume=(--resume "$out/checkpoint.pth"); fi
    run torchrun --nproc-per-node "$NPROC" vision_plugin/train.py --dataset imagefolder --data-path "$DATA" \
        --batch-size 32 --workers "$WORKERS" --amp --no-progress --print-freq 100 --output-dir "$out" \
        "$@" "${resume[@]}"
}

for seed in $SEEDS; do
    for alpha in $ALPHAS; do
        teacher="$OUT/teacher_r50_a${alpha}_s${seed}"
        train "$teacher" --model resnet50 --epochs 90 --lr 0.1 --momentum 0.9 --wd 1e-4 \
            --lr-scheduler steplr --lr-step-size 30 --lr-gamma 0.1 --label-smoothing "$alpha" --seed "$seed"
        for T in $TEMPS; do
            train "$OUT/student_r18_a${alpha}_T${T}_s${seed}" --model resnet18 --epochs 200 --lr 0.1 \
                --momentum 0.9 --wd 1e-4 --lr-scheduler steplr --lr-step-size 80 --lr-gamma 0.1 --seed "$seed" \
                --teacher resnet50 --teacher-ckpt "$teacher/checkpoint.pth" --kd-temperature "$T" --kd-beta 1
        done
    done
done

# Penultimate features (float16 keeps the 1.28M x 512 train split at ~1.3 GB) and the diffusion index
# between T=1 and T=3 for the LS teacher's students: miniature poodle (n02113712) vs standard poodle
# (n02113799) and submarine (n04347754), as in Fig. 1 (classes by wnid: ImageFolder's class names);
# then all classes with WordNet-hierarchy sets (S1: 4 nearest, S2: 20 random outside the subtree).
for alpha in $ALPHAS; do
    for T in $TEMPS; do
        run_dir="$OUT/student_r18_a${alpha}_T${T}_s0"
        for split in train val; do
            run python -m vision_plugin.export_features --ckpt "$run_dir/checkpoint.pth" --data-path "$DATA" \
                --split "$split" --dtype float16 --workers "$WORKERS" --out "$run_dir/features_${split}.npz"
        done
    done
done
run python -m lskd_core.eta --before "$OUT/student_r18_a0.1_T1_s0/features_val.npz" \
    --after "$OUT/student_r18_a0.1_T3_s0/features_val.npz" --target n02113712 --similar n02113799 \
    --dissimilar n04347754 --json
run python -m lskd_core.eta --before "$OUT/student_r18_a0.1_T1_s0/features_val.npz" \
    --after "$OUT/student_r18_a0.1_T3_s0/features_val.npz" --wordnet --json
