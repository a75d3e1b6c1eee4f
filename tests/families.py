"""Tiny random checkpoints of each model family users fine-tune, saved as the hub ships them: the family's config
(2 layers, 32 wide, random weights) and a tokenizer laid out like the real one (its special tokens and their ids,
a pad token or none, its kind of vocabulary), trained with `tokenizers` on a few hundred synthetic reviews."""

import json
from pathlib import Path

import torch
import transformers
from conftest import make_reviews
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.implementations import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer
from transformers import PreTrainedTokenizerFast

TEXTS = make_reviews(300, seed=7)["review"].tolist() + ["A wonderful, moving film. Two hours I will never get back!"]
SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def wordpiece(specials, lowercase=True):
    """A WordPiece vocabulary (BERT, DistilBERT, ELECTRA, MPNet) with specials first, in their order."""
    tok = Tokenizer(models.WordPiece(unk_token=next(s for s in specials if "unk" in s.lower())))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    return tok.get_vocab()


def byte_bpe(specials):
    """(vocab, merges) of a byte-level BPE (RoBERTa, GPT-2, ModernBERT, Llama 3, Qwen) with specials first."""
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXTS, vocab_size=400, special_tokens=specials, show_progress=False)
    merges = json.loads(tok._tokenizer.to_str())["model"]["merges"]
    return tok.get_vocab(), [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def unigram(specials):
    """A SentencePiece Unigram vocabulary as (piece, score) pairs (XLM-R, ALBERT, DeBERTa-v2/v3), specials first."""
    tok = SentencePieceUnigramTokenizer()
    unk = next(s for s in specials if "unk" in s.lower())
    tok.train_from_iterator(TEXTS, vocab_size=300, special_tokens=specials, unk_token=unk, show_progress=False)
    return [tuple(piece) for piece in json.loads(tok._tokenizer.to_str())["model"]["vocab"]]


def encoder(path, family, tokenizer, config, **extra):
    """Save a random encoder of family (its config class from transformers) and tokenizer into path."""
    config = transformers.CONFIG_MAPPING[family](
        vocab_size=len(tokenizer), **{**SIZE, **extra}, pad_token_id=tokenizer.pad_token_id, **config
    )
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bert(path):
    vocab = wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return encoder(path, "bert", transformers.BertTokenizer(vocab=vocab, model_max_length=512), {})


def distilbert(path):
    vocab = wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = transformers.DistilBertTokenizer(vocab=vocab, model_max_length=512)
    config = transformers.DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    transformers.DistilBertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def electra(path):
    vocab = wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return encoder(
        path, "electra", transformers.ElectraTokenizer(vocab=vocab, model_max_length=512), {"embedding_size": 16}
    )  # narrower embeddings, projected up: embeddings_project


def mpnet(path):  # WordPiece words with RoBERTa's special tokens, <pad> = 1: positions start at 2
    vocab = wordpiece(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
    return encoder(
        path, "mpnet", transformers.MPNetTokenizer(vocab=vocab, model_max_length=512), {"max_position_embeddings": 514}
    )


def roberta(path):  # byte-level BPE, <s> <pad> </s> <unk>, positions offset by <pad> = 1
    vocab, merges = byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return encoder(
        path,
        "roberta",
        transformers.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=512),
        {"max_position_embeddings": 514},
    )


def xlm_roberta(path):  # SentencePiece Unigram, RoBERTa's special tokens and position offset
    vocab = unigram(["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer = transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    tokenizer.add_special_tokens({"mask_token": "<mask>"})
    return encoder(path, "xlm-roberta", tokenizer, {"max_position_embeddings": 514})


def albert(path):  # SentencePiece Unigram; one set of layer weights shared by every layer
    vocab = unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"])
    return encoder(
        path, "albert", transformers.AlbertTokenizer(vocab=vocab, model_max_length=512), {"embedding_size": 16}
    )


def deberta_v2(path):  # DeBERTa-v3's layout: SentencePiece Unigram, [PAD] [CLS] [SEP] [UNK], relative positions
    vocab = unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]"])
    tokenizer = transformers.DebertaV2Tokenizer(vocab=vocab, do_lower_case=False, unk_id=3)
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    return encoder(
        path,
        "deberta-v2",
        tokenizer,
        {
            "relative_attention": True,
            "position_biased_input": False,
            "pos_att_type": ["p2c", "c2p"],
            "max_relative_positions": -1,
            "position_buckets": 16,
            "norm_rel_ebd": "layer_norm",
        },
    )


def modernbert(path):  # byte-level BPE with BERT's special tokens at the end of the vocabulary, rotary positions
    vocab, merges = byte_bpe(["|||IP_ADDRESS|||", "<|padding|>"])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=8192,
    )
    return encoder(
        path,
        "modernbert",
        tokenizer,
        {
            "cls_token_id": cls,
            "sep_token_id": sep,
            "bos_token_id": cls,
            "eos_token_id": sep,
            "global_attn_every_n_layers": 2,
            "local_attention": 16,
            "max_position_embeddings": 8192,
        },
    )


def decoder(path, family, tokenizer, config):
    """A random decoder with a classification head: no pad_token_id in config.json, as the real ones ship."""
    config = transformers.CONFIG_MAPPING[family](vocab_size=len(tokenizer), **config)
    config.pad_token_id = None
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def gpt2(path):  # byte-level BPE, <|endoftext|> its only special token: no pad token
    vocab, merges = byte_bpe(["<|endoftext|>"])
    tokenizer = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=1024)
    return decoder(
        path,
        "gpt2",
        tokenizer,
        {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 1024, "bos_token_id": 0, "eos_token_id": 0},
    )


def llama(path):  # Llama 3's layout: byte-level BPE, <|begin_of_text|> before each text, no pad token
    vocab, merges = byte_bpe(["<|begin_of_text|>", "<|end_of_text|>"])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", model_max_length=131072
    )
    return decoder(
        path,
        "llama",
        tokenizer,
        dict(**SIZE, num_key_value_heads=1, max_position_embeddings=131072, bos_token_id=0, eos_token_id=1),
    )


def qwen(path):  # Qwen2.5/3's layout: byte-level BPE, a pad token in the tokenizer, none in config.json
    vocab, merges = byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=131072
    )
    return decoder(
        path,
        "qwen3",
        tokenizer,
        dict(**SIZE, num_key_value_heads=1, head_dim=16, max_position_embeddings=40960, eos_token_id=2),
    )


FAMILIES = {
    f.__name__.replace("_", "-"): f
    for f in (bert, distilbert, roberta, xlm_roberta, electra, albert, mpnet, deberta_v2, modernbert, gpt2, llama, qwen)
}


def save_family(name, path):
    """The family's tiny checkpoint in path, its random weights drawn from a fixed seed (every run of the suite alike)."""
    torch.manual_seed(0)
    return FAMILIES[name](Path(path))
