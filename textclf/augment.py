"""Augmented copies of the labelled training texts as transfer texts for a teacher to label (DISTILL_AUGMENT), after
Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks": each word of a copy is
masked with probability MASK, or replaced with probability REPLACE, and with probability WINDOW the copy is an n-gram of
1 to 5 words of it. Tang et al. replace a word by one of the same part of speech; without a tagger, the word here is
drawn from the training texts' own words, as often as they occur. Deterministic for a seed; validation and test texts
are never read."""

import numpy as np
import pandas as pd

MASK = 0.1  # each word: the mask token
REPLACE = 0.1  # each word: a word of the training texts, drawn by how often it occurs
WINDOW = 0.25  # each copy: an n-gram of it instead, n from 1 to 5 (Tang et al.'s p_ng)


def copies(texts, n, seed, mask_token):
    """n augmented copies of each of texts (a list of str), in order: the n copies of the first text, then of the
    second, and so on; a copy is never empty."""
    rng = np.random.default_rng(seed)
    words = [text.split() for text in texts]
    corpus = np.array([word for text in words for word in text], dtype=object)
    made = []
    for text in words:
        for _ in range(n):
            made.append(" ".join(augmented(text, rng, corpus, mask_token)) or mask_token)
    return made


def augmented(words, rng, corpus, mask_token):
    """One copy of words: each masked or replaced (MASK, REPLACE), then perhaps cut to an n-gram (WINDOW)."""
    draws = rng.random(len(words))
    replacements = corpus[rng.integers(0, len(corpus), len(words))] if len(corpus) else words
    copy = [
        mask_token if u < MASK else replacements[i] if u < MASK + REPLACE else word
        for i, (word, u) in enumerate(zip(words, draws, strict=True))
    ]
    if copy and rng.random() < WINDOW:
        size = min(int(rng.integers(1, 6)), len(copy))
        start = int(rng.integers(0, len(copy) - size + 1))
        copy = copy[start : start + size]
    return copy


def augmented_frame(train, n, seed, mask_token):
    """n copies of each training row's text (and of its pair's second text, augmented on its own), as a frame with the
    text columns of train."""
    frame = pd.DataFrame({"text": copies(train["text"].tolist(), n, seed, mask_token)})
    if "text_pair" in train:
        frame["text_pair"] = copies(train["text_pair"].tolist(), n, seed + 1, mask_token)
    return frame
