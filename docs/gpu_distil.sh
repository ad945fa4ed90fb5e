#!/usr/bin/env bash
# Train independent MrCNNs teachers, then distil MrCNN students from all teachers, on one GPU
# in one call of under 10 minutes (the device tool's limit per command; see RESULTS.md,
# "Seventh session"). What it writes under $OUT: the teachers' shippable checkpoints (packed
# three per tar, each tar under 16 MiB), the best two students' shippable checkpoints (by val
# sAUC on the packed data) and a tar of every run's log.
#
#   python docs/pack_mit1003.py            # here: data/MIT1003_packed (train + val, ~31 MiB)
#   OUT=out bash docs/gpu_distil.sh        # there, with data/ carried
#
# Every setting can be overridden from the environment (the defaults are what was run).
set -u
DATA=${DATA-data/MIT1003_packed}           # empty: main.py's synthetic set (a smoke test)
OUT=${OUT:-out}
PY=${PY:-python3}
SEEDS=${SEEDS:-"11 12 13 14 15 16 17"}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-12}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-10}
SCRATCH_EPOCHS=${SCRATCH_EPOCHS:-14}
TEACHER_LIMIT=${TEACHER_LIMIT:-240}       # seconds a teacher run may take (then it is stopped)
DEADLINE=${DEADLINE:-560}                 # seconds from the start by which the students stop
KEEP_STUDENTS=${KEEP_STUDENTS:-2}
J=${J:-2}
CK=${CK:-/tmp/gpu_distil_ck}
TEACHER_DIR=${TEACHER_DIR:-checkpoint/pretrained/teachers}  # where the new teachers go
start=$SECONDS
LOGS=/tmp/gpu_distil_logs
rm -rf "$CK" "$LOGS" /tmp/gpu_distil_tb
mkdir -p "$OUT" "$TEACHER_DIR" "$LOGS"
export PYTHONWARNINGS=ignore  # the packed val maps are larger than their stimuli: one note each
data_flag=${DATA:+--data-dir $DATA}
common="$data_flag --checkpoint-dir $CK --log-dir /tmp/gpu_distil_tb -j $J"
echo "$(date -u +%T) start: $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")')"
if [ -n "$DATA" ]; then
    $PY -c "import dataset; dataset.build_image_cache('$DATA', '.cache', progress=False)" || exit 1
fi

# 1. teachers: binary labels (the paper's targets), each its own seed
for s in $SEEDS; do
    timeout -k 30 -s INT "$TEACHER_LIMIT" $PY main.py $common --model MrCNNs --epochs "$TEACHER_EPOCHS" \
        --lr-schedule cosine --weight-decay 0.001 --seed "$s" --run-name "gpu_mrcnns_t$s" \
        > "$LOGS/gpu_mrcnns_t$s.log" 2>&1 &
done
wait
echo "$(date -u +%T) teachers done after $((SECONDS - start)) s"
teachers="--teacher checkpoint/pretrained/teachers/MrCNN.pth --teacher checkpoint/pretrained/MrCNNs.pth"
shipped=()
for s in $SEEDS; do
    [ -f "$CK/gpu_mrcnns_t$s/best.pth" ] || { echo "teacher $s has no best.pth"; continue; }
    $PY checkpoints.py ship "$CK/gpu_mrcnns_t$s/best.pth" "$TEACHER_DIR/MrCNNs_t$s.pth" \
        --note "GPU teacher (H100, bf16), data/MIT1003_packed made by docs/pack_mit1003.py" \
        > "$LOGS/ship_t$s.log" 2>&1 &
    teachers="$teachers --teacher $TEACHER_DIR/MrCNNs_t$s.pth"
    shipped+=("$TEACHER_DIR/MrCNNs_t$s.pth")
done
wait
for ((i = 0; i < ${#shipped[@]}; i += 3)); do
    tar -cf "$OUT/teachers_$((i / 3)).tar" "${shipped[@]:i:3}"
done

# 2. students: MrCNN towards the blurred mean map of every teacher
distil="--model MrCNN --labels map --teacher-blur 0.03 --weight-decay 0.001 --lr-schedule cosine
        --non-fixations-per-image 10 $teachers"
student() {  # name, then its own flags
    local name=$1; shift
    timeout -k 20 -s INT $((DEADLINE - (SECONDS - start))) $PY main.py $common $distil \
        --run-name "$name" "$@" > "$LOGS/$name.log" 2>&1
}
finetune="--init-from checkpoint/pretrained/teachers/MrCNN.pth --learning-rate 0.0003 --epochs $STUDENT_EPOCHS"
student gpu_distil_ft $finetune --uniform-locations-per-image 10 &
# the first run caches every teacher's maps of the training images; the others then read them
n_teachers=$(( ${#shipped[@]} + 2 ))
for _ in $(seq 120); do
    [ "$(ls .cache/teacher_maps 2>/dev/null | wc -l)" -ge "$n_teachers" ] && break
    sleep 1
done
student gpu_distil_ft_u30 $finetune --uniform-locations-per-image 30 &
student gpu_distil_ft_tw07 $finetune --uniform-locations-per-image 10 --teacher-weight 0.7 &
student gpu_distil_scratch --learning-rate 0.001 --epochs "$SCRATCH_EPOCHS" \
    --uniform-locations-per-image 20 &
wait
echo "$(date -u +%T) students done after $((SECONDS - start)) s"

# 3. the best students by val sAUC, and every log
ranked=$($PY - "$CK" <<'EOF'
import sys
from pathlib import Path
import torch
scores = []
for path in Path(sys.argv[1]).glob("gpu_distil_*/best.pth"):
    state = torch.load(path, map_location="cpu", weights_only=True)
    scores.append((state["best_metric"], path.parent.name))
for score, name in sorted(scores, reverse=True):
    print(name, f"{score:.4f}", file=sys.stderr)
print(" ".join(name for _, name in sorted(scores, reverse=True)))
EOF
)
for name in $(echo "$ranked" | tr ' ' '\n' | head -n "$KEEP_STUDENTS"); do
    $PY checkpoints.py ship "$CK/$name/best.pth" "$OUT/$name.pth" \
        --note "GPU student (H100, bf16), data/MIT1003_packed made by docs/pack_mit1003.py"
done
tar -cf "$OUT/logs.tar" -C "$LOGS" .
echo "$(date -u +%T) done after $((SECONDS - start)) s"
