"""An ONNX export of a finished run (export.py's folder): model.onnx, config.json (the labels, the task, how texts are
read and cut) and the tokenizer files or the LSTM's vocab.json, read back as predict.py reads a run: the same
preprocessing as the run's, the logits by ONNX Runtime. export.py writes the folder; predict.py and export.py's own
check read it here."""

import json
from pathlib import Path

import numpy as np

from .settings import RecipeError

KEY = "textclf"  # config.json's block of what this collection's readers need beside transformers' own keys


def is_export(folder):
    """Whether folder is an export (model.onnx beside a config.json that has our block)."""
    folder = Path(folder)
    if not (folder / "model.onnx").is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return KEY in json.loads((folder / "config.json").read_text())
    except ValueError:
        return False


def onnx_session(path, threads=None):
    """An ONNX Runtime session of the model at path, on the best provider this onnxruntime has (CUDA where the GPU
    package is installed, else the CPU), with threads intra-op threads where given."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as errors

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=onnxruntime.get_available_providers())
    except (errors.Fail, errors.InvalidProtobuf, errors.NoSuchFile, errors.InvalidArgument, errors.InvalidGraph) as e:
        raise RecipeError(
            f"{path} does not load in ONNX Runtime ({type(e).__name__}: {' '.join(str(e).split())[:160]}); export "
            f"the run again"
        ) from None


class Export:
    """An export folder: .config (config.json), .block (its textclf block), .session (ONNX Runtime) and .inputs (the
    names model.onnx takes)."""

    def __init__(self, folder, threads=None):
        self.folder = Path(folder)
        try:
            self.config = json.loads((self.folder / "config.json").read_text())
            self.block = self.config[KEY]
            self.labels = [self.config["id2label"][str(i)] for i in range(len(self.config["id2label"]))]
        except (ValueError, KeyError, TypeError) as e:
            raise RecipeError(
                f"{self.folder / 'config.json'} is not an export's config.json ({type(e).__name__}: {e}); export the "
                f"run again with export.py"
            ) from None
        self.session = onnx_session(self.folder / "model.onnx", threads)
        self.inputs = [node.name for node in self.session.get_inputs()]

    def logits(self, tensors):
        """The model's float32 logits of one collated batch: a transformer's (input_ids, attention_mask, labels[,
        token_type_ids]) or the LSTM's (ids, lengths, labels)."""
        if self.block["kind"] == "lstm":
            feeds = {"ids": tensors[0], "lengths": tensors[1]}
        else:
            feeds = {"input_ids": tensors[0], "attention_mask": tensors[1]}
            if len(tensors) > 3:
                feeds["token_type_ids"] = tensors[3]
        feeds = {name: np.asarray(value, dtype=np.int64) for name, value in feeds.items() if name in self.inputs}
        return self.session.run(["logits"], feeds)[0].astype(np.float32)
