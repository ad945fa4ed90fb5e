#!/usr/bin/env bash
# 10-fold cross-validation of one recipe on MIT1003: train the ten folds (PARALLEL at a time;
# several runs share one GPU well), then score every image with the run that held it out.
#
#   NAME=adam bash tools/train_folds.sh --lr-schedule cosine --weight-decay 0.001 --epochs 12
#   PARALLEL=5 NAME=sgd bash tools/train_folds.sh --optimizer sgd --learning-rate 0.002 \
#       --batch-size 256 --max-norm 0.1 --epochs 300 --patience 20
#   NAME=distil bash tools/train_folds.sh --teacher checkpoint/adam_fold{K}/best.pth ...
#
# Every argument goes to each main.py run, {K} replaced by the fold number (a --teacher or
# --init-from checkpoint must come from the same fold: main.py refuses any other, as it saw the
# held-out images). Each fold is one independent command, so on a cluster a job array runs
# fold $SLURM_ARRAY_TASK_ID as:
#   python main.py --data-dir data/MIT1003 --fold $SLURM_ARRAY_TASK_ID --run-name NAME_fold$SLURM_ARRAY_TASK_ID ...
# A stopped fold (Ctrl-C, SIGTERM, a time limit) keeps interrupted.pth, and last.pth (written
# every epoch) survives even a kill; running this script again resumes the newer of the two on
# DATA (a copy of the data elsewhere will do: main.py checks its content) and skips the folds
# that have a final_model.pth.
# Each fold, once trained, is scored on the images it held out by its best.pth (the epoch chosen
# on its inner validation fold, never on those images) into OUT/fold<K>: per-image scores and
# raw maps, as docs/cv_* keep them (a fold already scored there is skipped); once all
# ten are in, test.py --folds pools them into OUT. Environment: DATA (data/MIT1003), NAME (cv),
# PARALLEL (1), PY (python), CHECKPOINTS (checkpoint), OUT (results/cv_NAME).
set -u
DATA=${DATA:-data/MIT1003}
NAME=${NAME:-cv}
PARALLEL=${PARALLEL:-1}
PY=${PY:-python}
CHECKPOINTS=${CHECKPOINTS:-checkpoint}
OUT=${OUT:-results/cv_$NAME}
cd "$(dirname "$0")/.."
mkdir -p "$CHECKPOINTS/logs_$NAME"
run_fold() {
    local k=$1 dir="$CHECKPOINTS/${NAME}_fold$1" saved
    shift
    set -- "${@//\{K\}/$k}"
    if [ -f "$dir/final_model.pth" ]; then return 0; fi
    # the newer of the two: a resumed run that was then killed leaves a stale interrupted.pth
    saved="$dir/interrupted.pth"
    if [ ! -f "$saved" ] || [ "$dir/last.pth" -nt "$saved" ]; then saved="$dir/last.pth"; fi
    if [ -f "$saved" ]; then
        $PY main.py --resume "$saved" --data-dir "$DATA" --checkpoint-dir "$CHECKPOINTS"
        return
    fi
    # a fold stopped before its first checkpoint: its folder is set aside, the fold starts anew
    if [ -d "$dir" ]; then
        if [ -f "$dir/.lock" ]; then
            read -r pid host < "$dir/.lock" || true
            if [ "$host" != "$(hostname)" ] || kill -0 "$pid" 2> /dev/null; then
                echo "fold $k is being run by process $pid on $host: not started again"
                return 1
            fi
        fi
        mv "$dir" "$dir.stopped-$(date +%Y%m%d-%H%M%S)" || return 1
        echo "fold $k had no checkpoint: its folder moved to $dir.stopped-*; starting it anew"
    fi
    $PY main.py --data-dir "$DATA" --fold "$k" --run-name "${NAME}_fold$k" \
        --checkpoint-dir "$CHECKPOINTS" "$@"
}
score_fold() {
    local k=$1
    [ -f "$OUT/fold$k/metrics.json" ] && return 0
    $PY test.py --data-dir "$DATA" --checkpoint "$CHECKPOINTS/${NAME}_fold$k/best.pth" \
        --split "fold$k/test" --output-dir "$OUT/fold$k"
}
# the image cache is built once, before the runs that share it start
$PY -c 'import sys, dataset; dataset.load_mit(sys.argv[1], "all")' "$DATA" > /dev/null || exit 1
for k in 0 1 2 3 4 5 6 7 8 9; do
    # scored in OUT already (e.g. kept in docs/): neither trained nor scored again
    [ -f "$OUT/fold$k/metrics.json" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
    echo "fold $k: log in $CHECKPOINTS/logs_$NAME/fold$k.log"
    # appended to: a resumed fold's log keeps the epochs it ran before the stop
    { run_fold "$k" "$@" && score_fold "$k"; } >> "$CHECKPOINTS/logs_$NAME/fold$k.log" 2>&1 &
done
wait
missing=0
for k in 0 1 2 3 4 5 6 7 8 9; do
    [ -f "$OUT/fold$k/metrics.json" ] && continue
    [ -f "$CHECKPOINTS/${NAME}_fold$k/final_model.pth" ] && echo "fold $k was not scored (see its log)" || echo "fold $k did not finish"
    missing=1
done
[ "$missing" = 0 ] || exit 1
$PY test.py --data-dir "$DATA" --output-dir "$OUT" \
    --folds $(for k in 0 1 2 3 4 5 6 7 8 9; do echo "$OUT/fold$k"; done)
