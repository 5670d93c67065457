"""A T5-style SentencePiece unigram vocabulary, trained offline with the `tokenizers` library.

Id layout, as T5's spiece.model plus its 100 extra ids: `<pad>`=0, `</s>`=1, `<unk>`=2, then the
learned pieces most probable first (the project's sampled-vocabulary prompt initialisation reads
the lowest ids as the most common words), then `<extra_id_99>` ... `<extra_id_0>` at the top
(`<extra_id_0>` is the last id). Saved as a Hugging Face fast tokenizer, so
`AutoTokenizer.from_pretrained(folder)` loads it offline and appends `</s>` to every text.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..errors import SoftpromptError
from ..files import atomic_folder, recover_folder, write_json_atomic

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)  # ids 0, 1, 2 as in T5
METASPACE = "▁"  # SentencePiece's word-boundary mark
TRAINING_FILE = "tokenizer_training.json"


@dataclass
class TokenizerConfig:
    """How the vocabulary is learned; saved beside the tokenizer as `tokenizer_training.json`."""

    vocab_size: int = 8192  # all ids: 3 specials + pieces + sentinels. T5 has 32,128 for C4; 8k suits a ~10M-word corpus, a multiple of 128 keeps GPU matmuls aligned
    num_sentinels: int = 100  # T5's extra_ids
    character_coverage: float = 0.9995  # SentencePiece's default: rarer characters become <unk> instead of taking pieces
    max_piece_length: int = 16  # SentencePiece's default
    shrinking_factor: float = 0.75  # SentencePiece's default
    n_sub_iterations: int = 2  # SentencePiece's default (EM steps per pruning round)
    max_documents: int | None = None  # documents read for training (SentencePiece's input_sentence_size); None: all
    model_max_length: int = 512  # T5's; relative positions let longer inputs run, this only sets truncation defaults


def sentinel_token(k: int) -> str:
    return f"<extra_id_{k}>"


def _normalizer() -> normalizers.Normalizer:
    """NFKC and collapsed whitespace, as SentencePiece's `nmt_nfkc` with `remove_extra_whitespaces`."""
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])


def _empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = _normalizer()
    # Words marked with a leading "▁", split on whitespace only, as T5's own tokenizer. (Splitting letter,
    # digit and symbol runs apart, as SentencePiece's split_by_unicode_script, was tried: with this trainer
    # it dropped pieces such as "▁a" and "▁on" and made the Wikipedia corpus 16% longer in tokens.)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    return tok


def rare_characters(texts: Sequence[str], coverage: float) -> set[str]:
    """Characters outside the most frequent ones that cover `coverage` of all characters (NFKC-normalised)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(unicodedata.normalize("NFKC", text))
    total, covered, rare = sum(counts.values()), 0, set()
    for char, n in counts.most_common():
        if covered >= coverage * total:
            rare.add(char)
        covered += n
    return rare


def _without(texts: Sequence[str], rare: set[str]) -> list[str]:
    """Rare characters become spaces for training only; at encoding time they map to <unk>."""
    if not rare:
        return list(texts)
    table = {ord(c): " " for c in rare}
    return [unicodedata.normalize("NFKC", t).translate(table) for t in texts]


def _sorted_by_score(tok: Tokenizer) -> Tokenizer:
    """Make the learned pieces score-descending (most probable first); the trainer already does, this checks it."""
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    specials, pieces = vocab[: len(SPECIAL_TOKENS)], vocab[len(SPECIAL_TOKENS) :]
    if [p for p, _ in specials] != list(SPECIAL_TOKENS):
        raise SoftpromptError(f"tokenizer training put {[p for p, _ in specials]} at ids 0-2, expected {list(SPECIAL_TOKENS)}")
    ordered = sorted(pieces, key=lambda piece: -piece[1])  # stable: equal scores keep the trainer's order
    if ordered != pieces:
        tok.model = models.Unigram(specials + ordered, unk_id=SPECIAL_TOKENS.index(UNK), byte_fallback=False)
    return tok


def _add_t5_conventions(tok: Tokenizer, num_sentinels: int) -> Tokenizer:
    """Sentinels at the top ids (<extra_id_0> last) and `</s>` appended to every encoded text."""
    tok.add_special_tokens([sentinel_token(k) for k in reversed(range(num_sentinels))])
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return tok


def train_unigram(texts: Sequence[str], config: TokenizerConfig | None = None) -> Tokenizer:
    """Learn the unigram pieces on `texts` and lay the ids out as T5 does (default settings: TokenizerConfig())."""
    config = config if config is not None else TokenizerConfig()
    if config.vocab_size <= len(SPECIAL_TOKENS) + config.num_sentinels:
        raise SoftpromptError(f"TokenizerConfig.vocab_size={config.vocab_size} leaves no room for pieces")
    texts = list(texts[: config.max_documents] if config.max_documents else texts)
    if not any(t.strip() for t in texts):
        raise SoftpromptError("no text to train the tokenizer on: every document is empty")
    tok = _empty_tokenizer()
    trainer = trainers.UnigramTrainer(
        vocab_size=config.vocab_size - config.num_sentinels,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token=UNK,
        max_piece_length=config.max_piece_length,
        shrinking_factor=config.shrinking_factor,
        n_sub_iterations=config.n_sub_iterations,
        show_progress=False,
    )
    tok.train_from_iterator(_without(texts, rare_characters(texts, config.character_coverage)), trainer, length=len(texts))
    return _add_t5_conventions(_sorted_by_score(tok), config.num_sentinels)


def wrap(tok: Tokenizer, config: TokenizerConfig | None = None) -> PreTrainedTokenizerFast:
    """The `transformers` face of the tokenizer: pad/eos/unk and sentinels named as T5's tokenizer names them."""
    config = config if config is not None else TokenizerConfig()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[sentinel_token(k) for k in range(config.num_sentinels)],
        model_max_length=config.model_max_length,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike) -> None:
    """`save_pretrained`, with the class recorded as the public `PreTrainedTokenizerFast` so any 4.x/5.x loads it."""
    tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    data = json.loads(config_file.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json_atomic(config_file, data)


def train_and_save(texts: Sequence[str], folder: str | os.PathLike, config: TokenizerConfig | None = None) -> PreTrainedTokenizerFast:
    """Train on `texts` and write the tokenizer folder atomically (with its training settings)."""
    config = config if config is not None else TokenizerConfig()
    tokenizer = wrap(train_unigram(texts, config), config)
    with atomic_folder(folder) as tmp:
        save_tokenizer(tokenizer, tmp)
        write_json_atomic(tmp / TRAINING_FILE, {"config": asdict(config), "documents": len(texts), "ids": len(tokenizer)})
    return load_tokenizer(folder)


def is_tokenizer_folder(folder: str | os.PathLike) -> bool:
    recover_folder(folder)
    return (Path(folder) / "tokenizer.json").is_file() and (Path(folder) / "tokenizer_config.json").is_file()


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer folder offline and check T5's layout.

    Raises SoftpromptError if the folder holds no tokenizer or its ids are not laid out as T5's.
    """
    if not is_tokenizer_folder(folder):
        raise SoftpromptError(f"{folder}: not a tokenizer folder (tokenizer.json / tokenizer_config.json missing)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise SoftpromptError(f"{folder}: cannot load the tokenizer ({e})") from None
    check_t5_layout(tokenizer, str(folder))
    return tokenizer


def check_t5_layout(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """pad/eos/unk at 0/1/2 and <extra_id_k> at len-1-k; raises SoftpromptError naming `where` otherwise."""
    got = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    if got != (0, 1, 2):
        raise SoftpromptError(f"{where}: pad/eos/unk ids are {got}, a T5 tokenizer has (0, 1, 2)")
    top = len(tokenizer) - 1
    if tokenizer.convert_tokens_to_ids(sentinel_token(0)) != top:
        raise SoftpromptError(f"{where}: {sentinel_token(0)} is not the last id ({top}) as T5's sentinels are")


def sentinel_id(tokenizer: PreTrainedTokenizerBase, k: int = 0) -> int:
    """Id of <extra_id_k>: T5 counts the sentinels down from the last id."""
    return len(tokenizer) - 1 - k


def num_sentinels(tokenizer: PreTrainedTokenizerBase) -> int:
    n = 0
    while tokenizer.convert_tokens_to_ids(sentinel_token(n)) == len(tokenizer) - 1 - n:
        n += 1
    return n


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary in id order: caches and checkpoints record it to catch a mismatched tokenizer."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:16]
