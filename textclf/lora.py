"""LoRA adapters (peft) for train_distilbert.py: the frozen base's dtype and 4-bit loading, the adapters on every linear
layer with the classification head trained in full, the checkpoint's part (what trains, nothing else), and the merged
model. The decisions are small functions: tests check them without a GPU."""

import importlib.util

import peft
import torch
from transformers.pytorch_utils import Conv1D

from .settings import RecipeError

HEADS = ("pre_classifier", "classifier", "score")  # the classification heads of transformers' models: trained in full


def base_dtype(lora_rank, precision):
    """The dtype the checkpoint's weights are loaded in: fp32 to train them all (full fine-tuning, the recipe); with
    LoRA the frozen base in the run's precision (bf16 or fp16: 2 bytes a parameter, half of fp32's)."""
    if lora_rank == 0:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def four_bit_settings(precision):
    """What LOAD_IN_4BIT quantizes and how (QLoRA, Dettmers et al. 2023): the base's linear weights in 4-bit NF4 with
    their scales quantized too (double quantization), computing in the run's precision; the head and the adapters
    stay in full precision."""
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": compute,
        "llm_int8_skip_modules": list(HEADS),
    }


def quantization(load_in_4bit, device, precision):
    """from_pretrained's quantization_config for LOAD_IN_4BIT: None without it; refused off CUDA or without
    bitsandbytes, with where it works."""
    if not load_in_4bit:
        return None
    if device.type != "cuda":
        raise RecipeError(
            f"LOAD_IN_4BIT (--load-in-4bit) loads the base in 4-bit with bitsandbytes, which runs on CUDA "
            f"GPUs only, and this run is on {device}; drop --load-in-4bit (LoRA alone keeps the base in "
            f"{precision}), or run on a CUDA GPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError(
            "LOAD_IN_4BIT (--load-in-4bit) needs the package bitsandbytes: pip install -r requirements-qlora.txt"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**four_bit_settings(precision))


def heads_of(model):
    """The names of model's classification head modules (HEADS that it has), trained in full beside the adapters."""
    return sorted({name.split(".")[-1] for name, _ in model.named_modules() if name.split(".")[-1] in HEADS})


def lora_config(model, s):
    """Adapters of LORA_RANK (scaled by LORA_ALPHA, with LORA_DROPOUT) on every linear layer of the encoder or
    decoder (peft's "all-linear": BERT's Linear, GPT-2's Conv1D, ModernBERT's fused Wqkv, DeBERTa's query_proj), the
    head excluded and trained in full."""
    heads = heads_of(model)
    return peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS,
        r=s["LORA_RANK"],
        lora_alpha=s["LORA_ALPHA"],
        lora_dropout=s["LORA_DROPOUT"],
        target_modules="all-linear",
        modules_to_save=heads,
        exclude_modules=heads,
    )


def with_adapters(model, s):
    """model (its base frozen) with LoRA adapters of LORA_RANK; what trains (adapters, head) in fp32, whatever the base
    is held in. A model without a linear layer peft can adapt is refused."""
    check_rank(model, s["LORA_RANK"])
    gradient_checkpointing = s.get("GRADIENT_CHECKPOINTING", False)
    if getattr(model, "is_loaded_in_4bit", False):  # the frozen 4-bit base: norms in fp32, inputs that need grads
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    try:
        adapted = peft.get_peft_model(model, lora_config(model, s))
    except (ValueError, TypeError) as e:
        raise RecipeError(
            f"LORA_RANK (--lora-rank) adds adapters to a model's linear layers, but peft cannot adapt "
            f"{type(model).__name__} ({' '.join(str(e).split())[:160]}); use --lora-rank 0 to fine-tune "
            f"it in full"
        ) from None
    for parameter in adapted.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    trained = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    print(
        f"LoRA rank {s['LORA_RANK']}: {trained:,} trained parameters (adapters and head, fp32) of {total:,} "
        f"({trained / total:.2%}); the base frozen in {next(model.parameters()).dtype}".replace("torch.", "")
    )
    return adapted


def check_rank(model, rank):
    """A rank at least the width of the narrowest layer the adapters go on is refused: such an adapter pair holds as
    many numbers as the weight it adapts, or more (rank 100,000 on a 32-wide model took 6.7 GB), and saves nothing."""
    heads = set(heads_of(model))
    widths = [  # in and out features (a 4-bit layer's weight is packed: its shape is not the layer's)
        min(module.in_features, module.out_features)
        if isinstance(module, torch.nn.Linear)
        else min(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and not heads & set(name.split("."))  # the head trains in full
    ]
    if widths and rank >= min(widths):
        raise RecipeError(
            f"LORA_RANK (--lora-rank) {rank} is at least the width of the narrowest layer it adapts in "
            f"{type(model).__name__} ({min(widths)}): adapters of that rank are no smaller than the weights "
            f"they adapt; use a rank well below it (8 or 16 are usual), or --lora-rank 0 to fine-tune in full"
        )


class Trained:
    """What a LoRA run's checkpoint.pt holds of the model: the adapters and the head (peft's state dict), not the
    frozen base, which --resume loads from MODEL_NAME again."""

    def __init__(self, model):
        self.model = model

    def state_dict(self):
        return {name: tensor.detach().cpu() for name, tensor in peft.get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state):
        peft.set_peft_model_state_dict(self.model, state)


def merged(base, state, s):
    """base with the adapters and head of state (a peft state dict, of the settings s) merged into its weights: a
    plain transformers model, the same for every family, that loads and runs with no peft."""
    adapted = peft.get_peft_model(base, lora_config(base, s))
    peft.set_peft_model_state_dict(adapted, state)
    return adapted.merge_and_unload()


def saved_state(folder, device):
    """The adapters and head that save_pretrained wrote into folder (adapter_model.safetensors), on device."""
    return peft.load_peft_weights(str(folder), device=str(device))
