"""Token ids as one flat tensor, batches of similar lengths, and padding: the same for any tokenizer."""

import itertools

import numpy as np
import torch


def flat_token_ids(pieces):
    """Lists of token ids as one flat int32 tensor and offsets: text i is ids[offsets[i]:offsets[i + 1]]."""
    offsets = torch.tensor(np.cumsum([0] + [len(ids) for ids in pieces]))
    ids = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(pieces), np.int32, count=int(offsets[-1])))
    return ids, offsets


def make_batches(lengths, batch_size, generator=None, grouped=True):
    """Batches of example indices, each once: longest first (no generator), else shuffled, grouped by length in 64s."""
    lengths = np.asarray(lengths)
    if generator is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        order = torch.randperm(len(lengths), generator=generator).numpy()
        if grouped:
            chunks = np.split(order, range(64 * batch_size, len(order), 64 * batch_size))
            order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if generator is not None and grouped:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


def pad_batch(indices, ids, offsets, pad_id, width=None):
    """The texts at indices, right-padded with pad_id to the longest one (or to width): ids and lengths."""
    indices = torch.as_tensor(np.asarray(indices))
    lengths = offsets[indices + 1] - offsets[indices]
    padded = torch.full((len(indices), int(lengths.max()) if width is None else width), pad_id, dtype=torch.int64)
    for row, (i, n) in enumerate(zip(offsets[indices].tolist(), lengths.tolist(), strict=True)):
        padded[row, :n] = ids[i : i + n]
    return padded, lengths


def loader(batches, collate, device):
    """collate(indices) of each batch, pinned on CUDA; its own generator leaves the global RNG to the model."""
    return torch.utils.data.DataLoader(
        batches, batch_size=None, collate_fn=collate, pin_memory=device.type == "cuda", generator=torch.Generator()
    )


def to_device(batch, device):
    return [tensor.to(device, non_blocking=True) for tensor in batch]
