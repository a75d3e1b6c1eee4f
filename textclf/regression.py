"""A regression run's one-output head in fp32: it computes outside autocast in training, evaluation and prediction, and
a saved model keeps its weights in fp32. bf16 keeps 8 bits of mantissa: a score near 1000 in bf16 is a multiple of 4."""

import json
from pathlib import Path

import torch
from safetensors import safe_open


class Fp32Linear(torch.nn.Linear):
    """A linear layer that computes in fp32 with autocast off, whatever its input's dtype: the head's output, a score,
    keeps fp32's 24 bits where the body runs in bf16 or fp16. Its parameters and state dict are nn.Linear's."""

    def forward(self, x):
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), self.weight.float(), bias)


def score_layer(model):
    """(name, module) of model's last one-output linear layer: a regression head's output layer, or (None, None)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == 1
    ]
    return found[-1] if found else (None, None)


def in_fp32(model, folder=None):
    """model with its score layer in fp32 (Fp32Linear): cast, or with folder (a save_pretrained folder that stored it
    in fp32 beside a bf16 body, which from_pretrained casts to the body's dtype) read back from its weights file."""
    name, layer = score_layer(model)
    if layer is None:
        return model
    layer.float()
    layer.__class__ = Fp32Linear
    stored = stored_tensors(Path(folder), [f"{name}.{part}" for part, _ in layer.named_parameters()]) if folder else {}
    with torch.no_grad():
        for part, parameter in layer.named_parameters():
            if f"{name}.{part}" in stored:
                parameter.copy_(stored[f"{name}.{part}"])
    return model


def stored_tensors(folder, keys):
    """{key: tensor} of keys found in folder's safetensors weights (one file, or the shards an index names), as stored."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {key: folder / weight_map[key] for key in keys if key in weight_map}
    else:
        files = {key: folder / "model.safetensors" for key in keys}
    found = {}
    for key, file in files.items():
        if file.is_file():
            with safe_open(str(file), "pt") as f:
                stored = set(f.keys())
                if key in stored:
                    found[key] = f.get_tensor(key).float()
    return found
