"""A transformer's inputs: texts (and pairs) as token ids by the checkpoint's own tokenizer, cut to MAX_LENGTH by head or
head+tail, and batches of them as the model takes them. train_distilbert.py trains on them, predict.py classifies with
them, and a teacher (textclf/distill.py) labels either script's texts with them."""

import numpy as np
import torch

from .batches import flat_token_ids, pad_batch
from .data import clean
from .parallel import progress


def tokenize(texts, tokenizer, max_length, truncation="head", head_tokens=0, chunk=2_000, pairs=None):
    """Token ids of all texts, as one flat int32 tensor, offsets (review i is ids[offsets[i]:offsets[i+1]]) and the
    token type ids, flat like the ids, where pairs are given and the model reads segments (else None).
    A review over max_length keeps its first tokens (head) or, with head+tail (Sun et al. 2019), the special tokens
    before it ([CLS]; none for GPT-2), its first head_tokens and its last tokens, [SEP] included, up to max_length.
    With pairs (the second text of each), each pair is encoded by the tokenizer's own pair template ([CLS] a [SEP]
    b [SEP] for BERT), the longer text cut first to fit max_length."""
    pieces, types, bare = [], [], tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    before = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)  # [CLS]: 1
    segments = pairs is not None and reads_segments(tokenizer)
    bar = progress(total=len(texts), desc="tokenize", unit="texts")
    for start in range(0, len(texts), chunk):
        batch = [clean(text) for text in texts[start : start + chunk]]
        if pairs is not None:
            second = [clean(text) for text in pairs[start : start + chunk]]
            encoded = tokenizer(
                batch, second, truncation="longest_first", max_length=max_length, return_token_type_ids=segments
            )
            pieces += encoded["input_ids"]
            types += encoded["token_type_ids"] if segments else []
        elif truncation == "head":
            pieces += tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]
        else:  # verbose=False: the untruncated lengths are expected here, not a mistake to warn about
            tail = max_length - before - head_tokens
            pieces += [
                p if len(p) <= max_length else p[: before + head_tokens] + p[-tail:]
                for p in tokenizer(batch, verbose=False)["input_ids"]
            ]
        bar.update(len(batch))
    bar.close()
    ids, offsets = flat_token_ids(pieces)
    return ids, offsets, flat_token_ids(types)[0].to(torch.int8) if segments else None


def has_pair_template(tokenizer):
    """Whether the tokenizer marks where a pair's second text begins (a [SEP] or </s> between the two): GPT-2 and
    Llama tokenizers put the second right after the first."""
    first, second = (tokenizer(word, add_special_tokens=False)["input_ids"] for word in ("first", "second"))
    both = tokenizer("first", "second")["input_ids"]
    joined = first + second
    return not any(both[i : i + len(joined)] == joined for i in range(len(both) - len(joined) + 1))


def reads_segments(tokenizer):
    """Whether the model takes token type ids (a pair's segments: BERT, DeBERTa), as its tokenizer declares."""
    return "token_type_ids" in tokenizer.model_input_names


def collate(indices, ids, offsets, labels, pad_id, pad_to=None, types=None):
    """Batch of reviews, right-padded to the longest one (or to pad_to): input_ids, attention_mask, labels and, for
    pairs on a model that reads segments, token_type_ids (types: tokenize()'s)."""
    input_ids, lengths = pad_batch(indices, ids, offsets, pad_id, pad_to)
    attention_mask = torch.arange(input_ids.shape[1]) < lengths[:, None]
    batch = [input_ids, attention_mask.long(), labels[np.asarray(indices)]]
    if types is not None:
        batch.append(pad_batch(indices, types, offsets, 0, pad_to)[0])
    return batch


def model_inputs(tensors):
    """The model's keyword arguments from collate()'s tensors (the labels, third, are the loss's)."""
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return dict(zip(names, [tensors[0], tensors[1], *tensors[3:]], strict=False))
