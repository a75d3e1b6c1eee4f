"""textclf.batches: length-grouped batches that cover every example once, and padding."""

import numpy as np
import torch

from textclf.batches import flat_token_ids, make_batches, pad_batch


def test_training_batches_are_a_shuffled_partition():
    lengths = np.random.default_rng(0).integers(1, 500, 1_000)
    for grouped in (True, False):
        batches = make_batches(lengths, 32, torch.Generator().manual_seed(1), grouped)
        assert len(batches) == 32 and sorted(np.concatenate(batches)) == list(range(1_000))
        again = make_batches(lengths, 32, torch.Generator().manual_seed(1), grouped)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # same seed, same epoch
    spread = np.mean([np.ptp(lengths[b]) for b in make_batches(lengths, 32, torch.Generator(), True)])
    assert spread < 60  # similar lengths share a batch (random batches spread over ~470)


def test_evaluation_batches_run_longest_first():
    batches = make_batches([3, 9, 1, 7, 5], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


def test_flat_ids_pad_back_to_the_texts():
    ids, offsets = flat_token_ids([[5, 6, 7], [8], [9, 10]])
    assert ids.dtype == torch.int32 and offsets.tolist() == [0, 3, 4, 6]
    padded, lengths = pad_batch([2, 0], ids, offsets, pad_id=0)
    assert padded.tolist() == [[9, 10, 0], [5, 6, 7]] and lengths.tolist() == [2, 3]
    assert pad_batch([1], ids, offsets, pad_id=-1, width=4)[0].tolist() == [[8, -1, -1, -1]]
