#!/usr/bin/env bash
# CUB-200-2011 recipe of the paper (Sec. 5 Table 2B, Table 4; App. "Training details"):
#   ImageNet-pretrained ResNet-50 teachers fine-tuned with alpha in {0, 0.1}; ResNet-18 (Table 2B) or
#   MobileNet-V2 (Table 4, STUDENT=mobilenet_v2) students distilled (beta = 1) at T in {1, 2, 3, 64};
#   200 epochs, lr 0.01 /10 every 80 epochs, batch 256 (8 GPUs x 32), SGD momentum 0.9,
#   random crops + flips (+ rotation and colour jitter with --extra-augment).
#
#   DATA=/datasets/CUB_200_2011 OUT=runs/cub bash examples/vision/cub.sh
#   DRY_RUN=1 bash examples/vision/cub.sh
#
# DATA is the extracted CUB_200_2011 folder (images.txt, image_class_labels.txt,
# train_test_split.txt, classes.txt, images/); val = the official test split.
# --weights IMAGENET1K_V1 downloads torchvision's ImageNet weights once (needs internet or a warm cache).
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-/datasets/CUB_200_2011}
OUT=${OUT:-runs/cub}
NPROC=${NPROC:-8}
SEEDS=${SEEDS:-"0 1 2"}
ALPHAS=${ALPHAS:-"0.0 0.1"}
TEMPS=${TEMPS:-"1 2 3 64"}
STUDENT=${STUDENT:-resnet18}
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
    run torchrun --nproc-per-node "$NPROC" vision_plugin/train.py --dataset cub --data-path "$DATA" \
        --batch-size 32 --workers "$WORKERS" --amp --extra-augment --no-progress --print-freq 20 \
        --epochs 200 --lr 0.01 --momentum 0.9 --wd 1e-4 --lr-scheduler steplr --lr-step-size 80 --lr-gamma 0.1 \
        --weights IMAGENET1K_V1 --output-dir "$out" "$@" "${resume[@]}"
}

for seed in $SEEDS; do
    for alpha in $ALPHAS; do
        teacher="$OUT/teacher_r50_a${alpha}_s${seed}"
        train "$teacher" --model resnet50 --label-smoothing "$alpha" --seed "$seed"
        for T in $TEMPS; do
            train "$OUT/student_${STUDENT}_a${alpha}_T${T}_s${seed}" --model "$STUDENT" --seed "$seed" \
                --teacher resnet50 --teacher-ckpt "$teacher/checkpoint.pth" --kd-temperature "$T" --kd-beta 1
        done
    done
done

# Features of every seed-0 student (all samples, as in the paper's CUB projections) and eta between
# T=1 and T=3 for the LS teacher's students: Loggerhead Shrike vs Great Grey Shrike (S1) and
# Black-footed Albatross (S2) as in Fig. A.3 (classes by name, as stored in the features files);
# then feature-space sets (App. G.2) for all classes.
for alpha in $ALPHAS; do
    for T in $TEMPS; do
        run_dir="$OUT/student_${STUDENT}_a${alpha}_T${T}_s0"
        for split in train val; do
            run python -m vision_plugin.export_features --ckpt "$run_dir/checkpoint.pth" --data-path "$DATA" \
                --split "$split" --save-logits --workers "$WORKERS" --out "$run_dir/features_${split}.npz"
        done
    done
done
run python -m lskd_core.eta --before "$OUT/student_${STUDENT}_a0.1_T1_s0/features_val.npz" \
    --after "$OUT/student_${STUDENT}_a0.1_T3_s0/features_val.npz" --target Loggerhead_Shrike --similar Great_Grey_Shrike --dissimilar Black_footed_Albatross --json
run python -m lskd_core.eta --before "$OUT/student_${STUDENT}_a0.1_T1_s0/features_val.npz" \
    --after "$OUT/student_${STUDENT}_a0.1_T3_s0/features_val.npz" --feature-sets 1,90 --json
