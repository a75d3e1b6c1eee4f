"""Export a finished run as a self-contained ONNX model that ONNX Runtime runs anywhere (C#, Java, C++, JavaScript, a
phone, a browser), without torch or transformers: fp32, or with --int8 its weights dynamically quantized to 8 bits.

    python export.py runs/distilbert exports/distilbert               # model.onnx, tokenizer, config.json, README.md
    python export.py runs/distilbert exports/distilbert-int8 --int8    # a quarter of the size, faster on CPUs
    python export.py runs/lstm exports/lstm --int8                     # the LSTM too: its vocabulary in vocab.json
    python predict.py exports/distilbert-int8 "A wonderful film."      # predict.py reads an export as it reads a run

RUN_DIR is a finished run of either training script (full, LoRA-merged or distilled: what predict.py takes). EXPORT_DIR
is new or empty; it is written whole or not at all. model.onnx maps token ids to logits (regression: to the score),
with free batch and sequence axes, exported by torch.onnx.export; --int8 quantizes its weights with
onnxruntime.quantization.quantize_dynamic. Before it reports success the export checks itself on the run's test split
(its first --check-texts texts, read from the run's data as the run read them): PyTorch and ONNX Runtime classify
them, and it prints the largest logit difference, how often their labels agree and each one's texts per second. An fp32
export must agree on every label, its scores within 1e-3, or it is an error and nothing is left; an int8 one is
reported as it is, with its accuracy beside PyTorch's on the same texts.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

import predict
import train_lstm_baseline as tl
from textclf.data import BR_TAG, targets
from textclf.exported import KEY
from textclf.metrics import scores, shown
from textclf.parallel import cpu_name
from textclf.runfolder import remove_stale, temporary
from textclf.settings import RecipeError, text_columns
from textclf.training import Run

FP32_TOLERANCE = 1e-3  # the largest difference an fp32 export's scores may have from PyTorch's
CHECK_BATCH = 64  # texts a forward pass in the check, both ways


class Logits(torch.nn.Module):
    """A transformer classifier as ONNX takes it: token ids (a pair's segments too, where the model reads them) in,
    float32 logits out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs).logits.float()


def export_folder(path):
    """EXPORT_DIR checked: new, or an empty folder; anything else is refused before a file is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RecipeError(f"EXPORT_DIR {path} is a file; give a new folder")
    if path.is_dir() and any(path.iterdir()):
        raise RecipeError(
            f"EXPORT_DIR {path} holds files already ({', '.join(sorted(p.name for p in path.iterdir())[:5])}); give a "
            f"new or empty folder: an export never writes over anything"
        )
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise RecipeError(f"EXPORT_DIR {path} lies under {above}, which is a file")
            break
    return path


def example_batch(source, texts, pairs):
    """Two of the texts, collated as the run collates them: what the exporter traces."""
    ids, offsets, types = source.encode(texts[:2], None if pairs is None else pairs[:2])
    labels = torch.zeros(len(offsets) - 1, dtype=torch.int64)
    if source.kind == "lstm":
        return tuple(tl.collate(range(len(offsets) - 1), ids, offsets, labels)[:2])
    batch = predict.td.collate(range(len(offsets) - 1), ids, offsets, labels, source.pad_id, types=types)
    return (batch[0], batch[1]) + ((batch[3],) if len(batch) > 3 else ())


def write_onnx(source, example, path):
    """source's model as path, by torch's exporter, its batch and sequence axes free: a transformer by torch.export
    (dynamo); the LSTM by the TorchScript exporter, which writes ONNX's own LSTM operator (torch.export unrolls the
    LSTM over the example's length, and ONNX Runtime's int8 LSTM kernel needs the operator). A model it cannot trace
    is one line. The exporter's own progress lines and warnings are kept back."""
    if source.kind == "lstm":
        model, names = source.model.float().eval(), ["ids", "lengths"]
        axes = {"ids": {0: "batch", 1: "sequence"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
        how = {"dynamo": False, "dynamic_axes": axes}
    else:
        model = Logits(source.model.float()).eval()
        names = ["input_ids", "attention_mask", "token_type_ids"][: len(example)]
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=source.settings["MAX_LENGTH"])
        how = {"dynamo": True, "dynamic_shapes": {name: {0: batch, 1: sequence} for name in names}}
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), warnings.catch_warnings(), quiet("torch", "onnxscript"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, example, path, input_names=names, output_names=["logits"], external_data=False, **how
            )
    except Exception as e:  # noqa: BLE001 (the exporter raises many kinds; each is one line here)
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise RecipeError(
            f"torch.onnx.export cannot trace {type(source.model).__name__} ({type(e).__name__}: {reason}); this "
            f"checkpoint's family does not export to ONNX with torch {torch.__version__}: serve the run with "
            f"predict.py or pipeline() instead"
        ) from None
    return names


@contextlib.contextmanager
def quiet(*loggers):
    """The named loggers (and the root's) at ERROR while the block runs."""
    saved = {name: logging.getLogger(name).level for name in ("", *loggers)}
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def quantized(fp32_path, int8_path):
    """fp32_path's weights (MatMul, Gemm, LSTM) dynamically quantized to signed 8 bits as int8_path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet("onnxruntime"):
        quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)


def test_split(record, limit):
    """(texts, pairs or None, targets, label names) of the run's test split, its first limit texts (0: all), read from
    the run's data as the run read them."""
    given = record.get("given") or [
        name for name, value in record["settings"].items() if value != defaults(record).get(name)
    ]
    reader = Run.reading(record["settings"], given)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            frame = reader.load_data()
        except RecipeError as e:
            raise RecipeError(
                f"export.py checks the export on the run's test split, read from its data as the run read it: {e}"
            ) from None
    rows = reader.test_rows[:limit] if limit else reader.test_rows
    texts = frame["text"].iloc[rows].tolist()
    pairs = frame["text_pair"].iloc[rows].tolist() if "text_pair" in frame else None
    return texts, pairs, targets(frame, reader.names)[rows], reader.names


def defaults(record):
    """The defaults of the script that made the run: what a setting of an older run's metrics.json was given against."""
    return predict.td.DEFAULTS if record.get("script") == "train_distilbert.py" else tl.DEFAULTS


def timed(logits, texts, pairs):
    """(logits, texts a second) of logits(texts, batch size, pairs)."""
    start = time.perf_counter()
    out = logits(texts, CHECK_BATCH, pairs)
    return out, len(texts) / (time.perf_counter() - start)


def compare(torch_logits, onnx_logits, task, threshold):
    """(largest logit difference, share of texts with the same label: the same class, the same set of labels, or,
    for regression, scores within FP32_TOLERANCE)."""
    difference = float((torch_logits - onnx_logits).abs().max()) if len(torch_logits) else 0.0
    if task == "regression":
        same = (torch_logits - onnx_logits).abs().squeeze(-1) <= FP32_TOLERANCE
    elif task == "multi_label":
        same = ((torch_logits.sigmoid() > threshold) == (onnx_logits.sigmoid() > threshold)).all(-1)
    else:
        same = torch_logits.argmax(-1) == onnx_logits.argmax(-1)
    return difference, float(same.float().mean()) if len(same) else 1.0


def config_of(source, record, names, precision):
    """config.json: the transformer's own config (id2label, problem_type) and the block a reader needs: the task,
    how texts are read and cut, the inputs, the run's settings and test figures."""
    task = record.get("task") or ("multi_label" if record.get("multi_label") else "single_label")
    if source.kind == "lstm":
        config = {
            "id2label": {str(i): label for i, label in enumerate(source.labels)},
            "label2id": {label: i for i, label in enumerate(source.labels)},
            "problem_type": {
                "single_label": "single_label_classification",
                "multi_label": "multi_label_classification",
            }.get(task, "regression"),
        }
    else:
        config = source.model.config.to_dict()
    config[KEY] = {
        "format": 1,
        "kind": "lstm" if source.kind == "lstm" else "transformer",
        "script": record.get("script"),
        "precision": precision,
        "task": task,
        "threshold": source.threshold,
        "text_columns": text_columns(source.settings),
        "pairs": source.pairs,
        "max_length": source.settings["MAX_LENGTH"],
        "truncation": "longest_first" if source.pairs else source.settings.get("TRUNCATION", "head"),
        "head_tokens": source.settings.get("HEAD_TOKENS", 0),
        "inputs": names,
        "output": "logits",
        "settings": source.settings,
        "run": {"test": record.get("test"), "examples": record.get("examples")},
    }
    if source.kind == "lstm":
        config[KEY]["vocabulary"] = {
            "file": "vocab.json",
            "clean": BR_TAG.pattern,
            "lowercase": True,
            "token_pattern": tl.TOKEN_PATTERN,
            "pad_id": 0,
            "unk_id": 1,
            "sep_id": 2 if source.pairs else None,
        }
    return json.loads(json.dumps(config, default=str))  # as a reader finds it: id2label's keys are text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="OUT_DIR of a finished run of either training script")
    parser.add_argument("export_dir", help="a new or empty folder for the export")
    parser.add_argument("--int8", action="store_true", help="weights dynamically quantized to int8")
    parser.add_argument(
        "--check-texts", type=int, default=512, help="test texts the export checks itself on (default 512; 0: all)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for the check, PyTorch's and ONNX Runtime's alike")
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, like every other error
    args = parser.parse_args(argv)
    try:
        return export(Path(args.run_dir), Path(args.export_dir), args.int8, args.check_texts, args.threads)
    except RecipeError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        print("interrupted: nothing was exported", file=sys.stderr)
        raise SystemExit(130) from None


def export(run_dir, export_dir, int8, check_texts, threads):
    """run_dir's model as export_dir, checked (check()); the check's figures."""
    if check_texts < 0:
        raise RecipeError(f"--check-texts must be 0 (the whole test split) or a number of texts, got {check_texts}")
    if threads is not None and threads < 1:
        raise RecipeError(f"--threads must be a positive number of threads, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    export_dir = export_folder(export_dir)
    source = predict.Run(run_dir, torch.device("cpu"), "fp32")  # the run's model and preprocessing, in fp32
    if source.kind == "onnx":
        raise RecipeError(f"{run_dir} is an export already; export the run it came from")
    record = json.loads((run_dir / "metrics.json").read_text())
    texts, pairs, targets, names = test_split(record, check_texts)
    precision = "int8" if int8 else "fp32"
    remove_stale(export_dir.parent)  # what a killed export left there: its own hidden folder, nothing else
    tmp = temporary(export_dir)
    tmp.mkdir(parents=True)
    try:
        onnx_path = tmp / ("model-fp32.onnx" if int8 else "model.onnx")
        print(f"exporting {type(source.model).__name__} from {run_dir} to ONNX ({precision})", file=sys.stderr)
        inputs = write_onnx(source, example_batch(source, texts, pairs), onnx_path)
        if int8:
            quantized(onnx_path, tmp / "model.onnx")
            onnx_path.unlink()
        if source.kind == "lstm":
            vocab = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)["vocab"]
            (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
            before = 0
        else:
            tokenizer = predict.AutoTokenizer.from_pretrained(run_dir / "model", trust_remote_code=False)
            tokenizer.save_pretrained(tmp)
            before = special_tokens_before(tokenizer)
        config = config_of(source, record, inputs, precision)
        write_json(tmp / "config.json", config)
        check = checked(source, predict.Run(tmp, torch.device("cpu"), threads=threads), texts, pairs, targets, names)
        check.update(texts_in_split=record.get("examples", {}).get("test"), precision=precision)
        if not int8 and (check["label_agreement"] < 1 or check["largest_logit_difference"] > FP32_TOLERANCE):
            raise RecipeError(
                f"the fp32 export disagrees with the run's PyTorch model: labels agree on "
                f"{check['label_agreement']:.4f} of {check['texts']} test texts, the largest logit difference is "
                f"{check['largest_logit_difference']:.3g} (at most {FP32_TOLERANCE} allowed); nothing was exported"
            )
        config[KEY]["check"] = check
        write_json(tmp / "config.json", config)
        size = (tmp / "model.onnx").stat().st_size / 1e6
        (tmp / "README.md").write_text(card(config, export_dir, run_dir, before, size))
        if export_dir.exists():  # an empty folder, checked above
            export_dir.rmdir()
        os.replace(tmp, export_dir)
    except BaseException:  # a failed check, Ctrl-C: no half-written export is left looking finished
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(check, export_dir)
    return check


def special_tokens_before(tokenizer):
    """How many special tokens the tokenizer puts before a text ([CLS]: 1; GPT-2: 0): where head+tail's head starts."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    return next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)


def write_json(path, value):
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def checked(source, exported, texts, pairs, targets, names):
    """The export's check: texts through PyTorch (source) and ONNX Runtime (exported), both timed; the largest logit
    difference, the labels' agreement, each one's scores on the texts and its texts a second."""
    torch_logits, torch_speed = timed(source.logits, texts, pairs)
    onnx_logits, onnx_speed = timed(exported.logits, texts, pairs)
    task = exported.export.block["task"]
    difference, agreement = compare(torch_logits, onnx_logits, task, exported.threshold)
    return {
        "texts": len(texts),
        "largest_logit_difference": difference,
        "label_agreement": agreement,
        "pytorch": scores(torch_logits, targets, names, exported.threshold or 0.5),
        "onnx": scores(onnx_logits, targets, names, exported.threshold or 0.5),
        "pytorch_texts_per_second": torch_speed,
        "onnx_texts_per_second": onnx_speed,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name() or "?",
    }


def brief(measured):
    """A split's headline scores, as the training log shows them."""
    return shown(measured)


def report(check, export_dir):
    size = (export_dir / "model.onnx").stat().st_size / 1e6
    of = f" of {check['texts_in_split']:,}" if check.get("texts_in_split") else ""
    print(
        f"checked on {check['texts']:,}{of} test texts: largest logit difference "
        f"{check['largest_logit_difference']:.3g}, labels agree on {check['label_agreement']:.4f}; test "
        f"{brief(check['onnx'])} (PyTorch fp32: {brief(check['pytorch'])}); {check['onnx_texts_per_second']:.1f} "
        f"texts/s in ONNX Runtime ({check['precision']}), {check['pytorch_texts_per_second']:.1f} in PyTorch (fp32), "
        f"{check['threads']} threads"
    )
    print(f"wrote {export_dir}: model.onnx ({size:.1f} MB), config.json, README.md and its tokenizer's files")


def card(config, export_dir, run_dir, before, size):
    """README.md: what the export is (size: model.onnx's, in MB), its run's test figures, its own check, and plain
    Python (onnxruntime and tokenizers, no torch) that classifies one text."""
    block, check = config[KEY], config[KEY]["check"]
    run = block["run"]["test"] or {}
    kind = "An LSTM" if block["kind"] == "lstm" else f"A {(config.get('architectures') or ['transformer'])[0]}"
    texts = "pairs of texts" if block["pairs"] else "one text"
    if block["pairs"]:
        cut = "the longer text of a pair cut first"
    elif block["truncation"] == "head+tail":
        cut = f"the first {block['head_tokens']} and the last tokens kept"
    else:
        cut = "the first tokens kept"
    labels = ", ".join(config["id2label"][str(i)] for i in range(len(config["id2label"])))
    what = {
        "single_label": "one label a text",
        "multi_label": "every label over its threshold",
        "regression": "a score",
    }
    int8 = "Its weights are int8 (dynamic quantization). " if block["precision"] == "int8" else ""
    about = (
        f"{kind} classifying {texts} ({what[block['task']]}: {labels}), exported by `export.py` from the "
        f"`{block['script']}` run in `{run_dir}`. `model.onnx` takes token ids ({', '.join(block['inputs'])}) and "
        f"returns `logits`{' (the score itself)' * (block['task'] == 'regression')}; texts are read at most "
        f"{block['max_length']} tokens long, {cut}. {int8}`model.onnx` is {size:.1f} MB."
    )
    measured = (
        f"The check: labels agree on {check['label_agreement']:.4f} of the texts, the largest logit difference is "
        f"{check['largest_logit_difference']:.3g}; ONNX Runtime classified {check['onnx_texts_per_second']:.1f} texts a "
        f"second, PyTorch {check['pytorch_texts_per_second']:.1f}, on {check['threads']} threads of {check['cpu']}."
    )
    packages = "onnxruntime" if block["kind"] == "lstm" else "onnxruntime tokenizers"
    usage = (
        f'`python predict.py {export_dir} "A wonderful film."` reads it as it reads a run (files, standard input, every '
        f"output column). In plain Python, with `pip install {packages}` and no torch:"
    )
    metric = "Pearson" if block["task"] == "regression" else "accuracy"
    lines = [
        f"# {export_dir.name}: an ONNX export ({block['precision']}) of {run_dir}",
        "",
        about,
        "",
        f"| | texts | test {metric} |",
        "|---|---|---|",
        f"| the run's test split (PyTorch) | {run_size(config)} | {figure(run)} |",
        f"| this export's check (ONNX Runtime, {block['precision']}) | {check['texts']:,} | {figure(check['onnx'])} |",
        f"| the same texts in PyTorch (fp32) | {check['texts']:,} | {figure(check['pytorch'])} |",
        "",
        measured,
        "",
        usage,
        "",
        "```python",
        example(config, export_dir, before),
        "```",
        "",
    ]
    return "\n".join(lines)


def run_size(config):
    examples = config[KEY]["run"]["examples"] or {}
    return f"{examples['test']:,}" if "test" in examples else "?"


def figure(measured):
    measured = measured or {}
    value = measured.get("pearson", measured.get("accuracy"))
    return "?" if value is None else f"{value:.4f}"


def example(config, export_dir, before):
    """The card's Python: one text (or pair) classified with onnxruntime and tokenizers (the LSTM: its vocabulary and
    a regular expression), cut as the run cut it."""
    block = config[KEY]
    top = [
        "import json",
        "import re",
        "",
        "import numpy as np",
        "import onnxruntime",
    ]
    head = [f'folder = "{export_dir}"', 'config = json.load(open(f"{folder}/config.json"))']
    head.append('session = onnxruntime.InferenceSession(f"{folder}/model.onnx")')
    if block["pairs"]:
        text = ['first, second = "A man is playing a guitar.", "A person plays music."']
    else:
        text = ['text = "A wonderful, moving film."']
    clean = 're.sub(r"<br\\s*/?>", " ", {}, flags=re.IGNORECASE)'
    maximum = block["max_length"]
    if block["kind"] == "lstm":
        vocabulary = block["vocabulary"]
        body = [
            'vocabulary = {token: i for i, token in enumerate(json.load(open(f"{folder}/vocab.json")))}',
            "",
            "",
            "def ids_of(text):  # the run's words: <br /> removed, lower case, its token pattern; 1 = <unk>",
            f'    words = re.findall(r"{vocabulary["token_pattern"]}", {clean.format("text")}.lower())',
            "    return [vocabulary.get(word, 1) for word in words] or [1]",
            "",
            "",
            *text,
        ]
        if block["pairs"]:
            body += [
                "first, second = ids_of(first), ids_of(second)",
                f"while len(first) + len(second) + 1 > {maximum} and len(first) + len(second) > 2:  # the longer one cut",
                "    longer = first if len(first) >= len(second) else second",
                "    longer.pop()",
                f"ids = first + [{vocabulary['sep_id']}] + second  # <sep> between them",
            ]
        else:
            body.append(f"ids = ids_of(text)[:{maximum}]")
        body.append(
            'inputs = {"ids": np.array([ids], dtype=np.int64), "lengths": np.array([len(ids)], dtype=np.int64)}'
        )
    else:
        top.append("from tokenizers import Tokenizer")
        body = ['tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")', "tokenizer.no_padding()", *text]
        if block["pairs"]:
            body += [
                f'tokenizer.enable_truncation({maximum}, strategy="longest_first")  # the longer text cut first',
                f"encoding = tokenizer.encode({clean.format('first')}, {clean.format('second')})",
                "ids = encoding.ids",
            ]
        else:
            body += ["tokenizer.no_truncation()", f"ids = tokenizer.encode({clean.format('text')}).ids"]
            if block["truncation"] == "head+tail":
                tail = maximum - before - block["head_tokens"]
                first = before + block["head_tokens"]
                kept = f"the first {first} tokens ({before} of them special), then the last {tail}"
                body += [
                    f"if len(ids) > {maximum}:  # the run's head+tail: {kept}",
                    f"    ids = ids[:{first}] + ids[len(ids) - {tail} :]",
                ]
            else:
                body += [f"ids = ids[:{maximum}]  # the run's cut: the first tokens"]
        body.append(
            'inputs = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}'
        )
        if "token_type_ids" in block["inputs"]:
            body.append('inputs["token_type_ids"] = np.array([encoding.type_ids], dtype=np.int64)')
    body.append('logits = session.run(["logits"], inputs)[0][0]')
    if block["task"] == "regression":
        body.append("print(float(logits[0]))  # the score itself")
    elif block["task"] == "multi_label":
        body += [
            "probabilities = 1 / (1 + np.exp(-logits))",
            f'print([config["id2label"][str(k)] for k in np.flatnonzero(probabilities > {block["threshold"]})])',
        ]
    else:
        body += [
            "probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()",
            'print(config["id2label"][str(int(logits.argmax()))], float(probabilities.max()))',
        ]
    return "\n".join([*top, "", *head, *body])


if __name__ == "__main__":
    main()
