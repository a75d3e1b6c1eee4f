"""A student made from a checkpoint's own layers (STUDENT_LAYERS), as DistilBERT was made from BERT (Sanh et al. 2019):
N of its layers, evenly spaced, with its embeddings and head, as an ordinary checkpoint of N layers that from_pretrained
reads. train_distilbert.py builds it where it loads MODEL_NAME; a teacher's hidden states are matched to it by the
layers it came from (DISTILL_HIDDEN)."""

import copy
import re

import torch

from .settings import RecipeError


def evenly_spaced(total, n):
    """The n of total layers a student keeps, evenly spaced from the first: 3 of 6 are 0, 2, 4 (DistilBERT: 0, 2, ...,
    10 of BERT's 12)."""
    return [i * total // n for i in range(n)]


def layer_list(model, name):
    """The dotted path of model's stack of transformer layers: the one ModuleList as long as the config's layer count
    (encoder.layer, transformer.layer, layers, h)."""
    total = model.config.num_hidden_layers
    if any(".albert_layer_groups." in key for key, _ in model.named_parameters()):
        raise RecipeError(
            f"STUDENT_LAYERS (--student-layers): {name} (ALBERT) shares one set of weights among all its layers: "
            f"there are no layers of its own to keep; use --student-layers 0"
        )
    stacks = [
        path
        for path, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == total and path
    ]
    if len(stacks) != 1:
        raise RecipeError(
            f"STUDENT_LAYERS (--student-layers): cannot find the layers of {name} ({type(model).__name__}: "
            f"{'no' if not stacks else len(stacks)} lists of {total} modules); use --student-layers 0"
        )
    return stacks[0]


def student_of(model, n, name):
    """model with n of its layers (evenly_spaced()), its embeddings, final norm and head: a model of the same class
    built from its config with n layers (their attention types kept: ModernBERT's global and local layers, Qwen's
    sliding ones), the kept layers' weights copied, renumbered from 0. .student says what it was made of."""
    total = model.config.num_hidden_layers
    if not 0 < n <= total:
        raise RecipeError(
            f"STUDENT_LAYERS (--student-layers) is {n}, but {name} has {total} layers: give a number from 1 to "
            f"{total} (0 keeps the model as it is)"
        )
    path = layer_list(model, name)
    keep = evenly_spaced(total, n)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = n  # (DistilBERT's n_layers, GPT-2's n_layer follow it)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    small = type(model)(config)
    layer = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    state = {}
    for key, value in model.state_dict().items():
        match = layer.match(key)
        if match is None:
            state[key] = value
        elif int(match[1]) in keep:
            state[layer.sub(f"{path}.{keep.index(int(match[1]))}.", key)] = value
    small.load_state_dict(state)
    first = next(model.parameters())
    small = small.to(device=first.device, dtype=first.dtype)
    small.student = {"of": name, "layers": keep, "of_layers": total}
    return small


def described(student):
    """The log's and the card's words for a student: '3 of all-MiniLM-L6-v2's 6 layers (0, 2, 4)'."""
    return (
        f"{len(student['layers'])} of {student['of']}'s {student['of_layers']} layers "
        f"({', '.join(map(str, student['layers']))})"
    )
