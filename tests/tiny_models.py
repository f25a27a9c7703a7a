"""Tiny BERT and T5 models built from configs, with tokenizers trained locally (no hub access)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "ho", "ju"]


def synthetic_words(n: int = 1500) -> list[str]:
    """Deterministic pseudo-words: the vocabulary of synthetic retrieval tasks in tests."""
    words = ["".join(p) for p in itertools.product(SYLLABLES, repeat=2)]
    words += ["".join(p) for p in itertools.product(SYLLABLES, repeat=3)]
    return words[:n]


def _training_text(extra: list[str] | None = None) -> list[str]:
    words = synthetic_words()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += extra or []
    lines += ["the of and a to in is for on with title text query passage"] * 5
    return lines


def build_bert_tokenizer(out_dir: str | os.PathLike, extra_text: list[str] | None = None):
    """A WordPiece tokenizer over the synthetic vocabulary; the same token ids in every process."""
    return build_fixed_vocab_bert_tokenizer(out_dir, _training_text(extra_text))


def build_t5_tokenizer(out_dir: str | os.PathLike, extra_text: list[str] | None = None):
    """A Unigram (sentencepiece-style) tokenizer with T5's special ids: pad 0 (also the decoder start),
    eos 1, unk 2. Its vocabulary is a pure function of the text (no trainer, whose ids vary by run):
    whole words score above single characters, so known words stay one token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Metaspace()
    words = sorted({w for text in _training_text(extra_text) for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for w in words for c in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(w, -5.0) for w in words] + [(c, -20.0) for c in chars if c not in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_bert(out_dir: str | os.PathLike, seed: int = 0, hidden: int = 32, extra_text=None) -> Path:
    """A 2-layer BERT over the synthetic vocabulary (plus the words of ``extra_text``)."""
    return _save_tiny_bert(Path(out_dir), build_bert_tokenizer(out_dir, extra_text), seed, hidden)


def _save_tiny_bert(out_dir: Path, tokenizer, seed: int, hidden: int) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out_dir)
    return out_dir


def build_tiny_t5(out_dir: str | os.PathLike, seed: int = 0, d_model: int = 32, gated: bool = False, extra_text=None) -> Path:
    import torch
    from transformers import T5Config, T5Model

    out_dir = Path(out_dir)
    tokenizer = build_t5_tokenizer(out_dir, extra_text)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=d_model * 2, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj="gated-gelu" if gated else "relu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=not gated,
    )
    torch.manual_seed(seed)
    T5Model(config).save_pretrained(out_dir)
    return out_dir


def build_fixed_vocab_bert_tokenizer(out_dir: str | os.PathLike, texts: list[str]):
    """A BERT tokenizer whose vocabulary is a pure function of ``texts``: the special tokens, then every
    character (alone and as ``##`` continuation), then every whole word, each group sorted.

    Trained WordPiece vocabularies change from run to run (the trainer's hash maps are randomly seeded), so
    a model built on one is not reproducible across processes.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + chars + [f"##{c}" for c in chars] + sorted(words - set(chars))
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    fast.save_pretrained(out_dir)
    return fast


def build_reproducible_tiny_bert(out_dir: str | os.PathLike, texts: list[str], seed: int = 0, hidden: int = 32) -> Path:
    """A tiny BERT whose vocabulary is exactly the words of ``texts``: byte-identical for the same ``texts``
    and ``seed`` in any process."""
    return _save_tiny_bert(Path(out_dir), build_fixed_vocab_bert_tokenizer(out_dir, texts), seed, hidden)


def _chain_bpe(words: list[str], specials: list[str], word_starts: list[str]) -> tuple[dict, list]:
    """A BPE vocabulary and merges under which each word (behind each of ``word_starts``, e.g. the
    SentencePiece "▁" or the byte-level "Ġ") is one token: every prefix of it is merged with its next character.

    Merges of the first start come first, so a word behind it is not split by merges of the later ones; a pure
    function of ``words`` (no trainer, whose ids vary by run)."""
    vocab = {token: i for i, token in enumerate(specials)}
    pieces = [start + word for start in word_starts for word in words]
    for char in sorted({c for piece in pieces for c in piece}):
        vocab.setdefault(char, len(vocab))
    merges, seen = [], set()
    for piece in pieces:
        current = piece[0]
        for char in piece[1:]:
            if (current, char) not in seen:
                seen.add((current, char))
                merges.append((current, char))
            current += char
            vocab.setdefault(current, len(vocab))
    return vocab, merges


def _words(extra_text=None) -> list[str]:
    return sorted({w for text in _training_text(extra_text) for w in text.split()})


def build_llama_tokenizer(out_dir: str | os.PathLike, extra_text: list[str] | None = None):
    """transformers' ``LlamaTokenizer`` over the synthetic words, laid out like Llama/Mistral's: ``<unk>`` 0,
    ``<s>`` 1 put in front of every text, ``</s>`` 2 appended by nothing, and no pad token."""
    from transformers import LlamaTokenizer

    vocab, merges = _chain_bpe(_words(extra_text), ["<unk>", "<s>", "</s>"], ["▁"])
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_qwen2_tokenizer(out_dir: str | os.PathLike, extra_text: list[str] | None = None):
    """transformers' byte-level ``Qwen2Tokenizer`` over the synthetic words, laid out like Qwen2/Qwen3's: no
    special token added to a text, and ``<|endoftext|>`` (id 0) both its end-of-text and its pad token."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _chain_bpe(_words(extra_text), ["<|endoftext|>"], ["Ġ", ""])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_llm(out_dir: str | os.PathLike, family: str = "llama", seed: int = 0, hidden: int = 32,
                   dropout: float = 0.0, extra_text=None) -> Path:
    """A randomly initialised 2-layer decoder saved as its ``...ForCausalLM``, as real checkpoints are, with
    the matching tokenizer; ``AutoModel`` loads its base model. ``family``: "llama" and "mistral" (Llama's
    tokenizer layout), "qwen2" and "qwen3" (Qwen's)."""
    import torch
    import transformers

    classes = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
    if family not in classes:
        raise ValueError(f"unknown family {family!r} ({', '.join(classes)})")
    out_dir = Path(out_dir)
    if family in ("llama", "mistral"):
        tokenizer = build_llama_tokenizer(out_dir, extra_text)
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    else:
        tokenizer = build_qwen2_tokenizer(out_dir, extra_text)
        # No pad_token_id, as in Qwen2/Qwen3 releases: it would zero the embedding of <|endoftext|>, their pad and EOS.
        ids = {"bos_token_id": None, "eos_token_id": tokenizer.eos_token_id}
    config_class = getattr(transformers, f"{classes[family]}Config")
    model_class = getattr(transformers, f"{classes[family]}ForCausalLM")
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=256,
        attention_dropout=dropout, tie_word_embeddings=True, **ids,
    )
    torch.manual_seed(seed)
    model_class(config).save_pretrained(out_dir)
    return out_dir
