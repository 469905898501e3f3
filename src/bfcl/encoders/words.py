"""The word-level "text encoder" of the BiLSTM-CRF and CNN-BiLSTM-CRF baselines of
Table 2 (Lample et al. 2016; Ma & Hovy 2016): ``model.text_encoder: words``.

There are no pretrained weights: the vocabulary is built from the training split,
and each word gets a row of an embedding table (``model.word_embedding_dim``),
initialised at random or from a user's vectors in word2vec text format
(``model.word_vectors``). With ``model.char_cnn_dim > 0`` a character CNN
(Ma & Hovy) is joined to each word's embedding. BFCL then runs on these rows as
on a transformer's output, so the baselines share the data pipeline, the BiLSTM,
the CRF, the metric and ``bfcl train`` with every other setting.

Choices, each documented where it is made:

* The vocabulary is a ``tokenizers`` WordLevel model in a ``PreTrainedTokenizerFast``
  (one token per word, no special tokens around the sentence), so the windowing
  and word alignment of ``bfcl.data.alignment`` work unchanged and the checkpoint
  saves it as ``tokenizer/tokenizer.json``: JSON, never pickle. Its metadata
  (``bfcl_words`` in ``tokenizer_config.json``) records how it was built.
* Ids, in this order: ``[PAD]`` 0, ``[UNK]`` 1, training words with at least
  ``word_min_count`` occurrences (most frequent first, ties alphabetical, so the
  vocabulary is the same on every rank and on resume), then the words of
  ``word_vectors`` not seen in training, in file order. Vector words join the
  vocabulary (as in Lample et al. and Ma & Hovy) because their point is to give
  dev/test words that training never saw a meaningful row; the checkpoint grows with
  the file (400k x 100 floats is 160 MB), so pass a trimmed file when that matters.
* Case: kept by default (``word_lowercase=false``), as Lample et al. do: on tweets
  capitalisation is the strongest entity cue a word-only model has. Lower-casing
  (a ``Lowercase`` normaliser inside the tokenizer, so prediction does the same)
  suits lower-cased vectors such as GloVe.
* Unknown words: Lample et al.'s singleton replacement. While training, a word
  seen once in the training split is replaced by ``[UNK]`` with probability
  ``word_singleton_unk`` (0.5 in the paper), so the ``[UNK]`` row is trained for
  the unseen words of dev, test and prediction.
* Characters are UTF-8 bytes (ids 1..256, 0 pads): ASCII text is character for
  character what Ma & Hovy embed, no character vocabulary has to be built or saved,
  and no character is ever unknown (an emoji is its 4 bytes); ``bfcl.data.chars``.
* Character CNN as Ma & Hovy (and their code): 30-dimensional character
  embeddings, dropout on them, a width-3 convolution with ``char_cnn_dim`` filters
  and tanh, max-pooled over the word's characters.
* ``model.dropout`` (0.5 in both papers) acts on the character embeddings and on each
  word's joined representation before the BiLSTM, besides BFCL's own dropout before
  the emission layer.
* The embeddings are new weights: they learn at ``train.head_lr`` (``BFCL.parameter_groups``);
  AdamW replaces the papers' SGD, as for every other setting of the framework.
"""

from __future__ import annotations

import gzip
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bfcl.errors import ConfigError, DataFormatError

WORDS = "words"
"""The ``model.text_encoder`` value that selects this encoder."""
MODEL_TYPE = "bfcl-words"
"""``model_type`` in a checkpoint's ``text_encoder_config``."""
PAD, UNK = "[PAD]", "[UNK]"
CHAR_EMBEDDING_DIM = 30
"""Ma & Hovy's character embedding size."""
CHAR_WINDOW = 3
"""Ma & Hovy's convolution window."""
METADATA_KEY = "bfcl_words"


def is_word_encoder(name: str) -> bool:
    return name == WORDS


# ---- word vectors (word2vec text format) ---------------------------------------------


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def iter_word_vectors(path: str | os.PathLike, *, parse: bool = True) -> Iterator[tuple[str, list[float] | None]]:
    """``(word, values)`` per line of a word2vec text file (``.gz`` too): a header line
    ``"<count> <dim>"``, then ``"<word> <v1> ... <vdim>"`` per line, separated by single
    spaces (a word may hold other whitespace). Every line is checked, also with
    ``parse=False`` (values None: only the words are wanted); a malformed line is a
    :class:`~bfcl.errors.DataFormatError` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.word_vectors={str(path)!r}: no such file")
    with _open_binary(path) as f:
        count = dim = None
        seen = 0
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n").rstrip(" ")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, lineno, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
            if count is None:
                head = line.split()
                if len(head) != 2 or not all(h.isdigit() for h in head) or int(head[1]) < 1:
                    raise DataFormatError(
                        path, lineno, f"expected the word2vec header '<count> <dim>', got {line[:60]!r} "
                        "(a GloVe file lacks it: add a first line with the number of vectors and their size)"
                    )
                count, dim = int(head[0]), int(head[1])
                continue
            parts = line.split(" ")
            word, values = parts[0], parts[1:]
            if not word:
                raise DataFormatError(path, lineno, "the line does not start with a word" if line else "empty line")
            if len(values) != dim:
                raise DataFormatError(
                    path, lineno, f"{word!r} has {len(values)} values, but the header says {dim}"
                )
            floats = None
            try:
                floats = [float(v) for v in values]
            except ValueError:
                bad = next(v for v in values if not _is_float(v))
                raise DataFormatError(path, lineno, f"{word!r}: value {bad!r} is not a number") from None
            if not all(math.isfinite(x) for x in floats):
                raise DataFormatError(path, lineno, f"{word!r}: a value is not finite (nan or inf)")
            seen += 1
            yield word, (floats if parse else None)
        if count is None:
            raise DataFormatError(path, 1, "empty file: expected the word2vec header '<count> <dim>'")
        if seen != count:
            raise DataFormatError(path, 1, f"the header says {count} vectors, but the file has {seen}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def word_vectors_dim(path: str | os.PathLike) -> int:
    """The vector size the header of a word2vec text file declares."""
    with _open_binary(Path(path)) as f:
        head = f.readline().decode("utf-8", errors="replace").split()
    return int(head[1]) if len(head) == 2 and all(h.isdigit() for h in head) else 0


def check_word_vectors(config: Any) -> None:
    """Fail early: ``word_vectors`` exists and its size is ``word_embedding_dim``."""
    if not config.word_vectors:
        return
    path = Path(config.word_vectors)
    if not path.is_file():
        raise ConfigError(f"model.word_vectors={config.word_vectors!r}: no such file")
    dim = word_vectors_dim(path)
    if dim and dim != config.word_embedding_dim:
        raise ConfigError(
            f"model.word_vectors={config.word_vectors!r} holds {dim}-dimensional vectors, but "
            f"model.word_embedding_dim={config.word_embedding_dim}: set model.word_embedding_dim={dim}"
        )


# ---- vocabulary: a WordLevel tokenizer -------------------------------------------------


def build_word_tokenizer(config: Any, sentences: Iterable[Sequence[str]]):
    """The vocabulary of the training ``sentences`` (and ``config.word_vectors``) as a fast
    tokenizer; see the module docstring for the id order and the choices."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    check_word_vectors(config)
    normalizer = normalizers.Lowercase() if config.word_lowercase else None
    norm = normalizer.normalize_str if normalizer is not None else (lambda w: w)
    counts = Counter(norm(w) for s in sentences for w in s)
    for special in (PAD, UNK):
        counts.pop(special, None)
    train_words = sorted((w for w, c in counts.items() if c >= config.word_min_count), key=lambda w: (-counts[w], w))
    vocab = {PAD: 0, UNK: 1}
    for w in train_words:
        vocab[w] = len(vocab)
    first_singleton = next((vocab[w] for w in train_words if counts[w] == 1), len(vocab))
    singletons = [first_singleton, len(vocab)]
    vector_words = 0
    if config.word_vectors:
        for word, _ in iter_word_vectors(config.word_vectors, parse=False):
            word = norm(word)
            if word not in vocab:
                vocab[word] = len(vocab)
                vector_words += 1
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    if normalizer is not None:
        tk.normalizer = normalizer
    # no pre-tokenizer and no post-processor: each given word is exactly one token, nothing is added
    meta = {
        "train_words": len(train_words), "vector_words": vector_words, "singletons": singletons,
        "min_count": config.word_min_count, "lowercase": config.word_lowercase,
    }
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, unk_token=UNK, **{METADATA_KEY: meta})


def word_metadata(tokenizer: Any) -> dict[str, Any]:
    meta = getattr(tokenizer, "init_kwargs", {}).get(METADATA_KEY)
    if not isinstance(meta, dict):
        raise ConfigError(
            "model.text_encoder=words needs the word-level vocabulary built from the training data "
            "(bfcl.encoders.words.build_word_tokenizer); this tokenizer is not one"
        )
    return meta


# ---- the encoder -----------------------------------------------------------------------


@dataclass
class WordEncoderConfig:
    """What a checkpoint records of the encoder (its ``text_encoder_config``), so it is rebuilt
    without the training data or the vectors file."""

    vocab_size: int
    embedding_dim: int
    char_cnn_dim: int = 0
    dropout: float = 0.0
    pad_id: int = 0
    unk_id: int = 1
    singletons: tuple[int, int] = (0, 0)
    """Ids ``[start, end)`` of the words seen once in training."""
    singleton_unk: float = 0.0
    char_embedding_dim: int = CHAR_EMBEDDING_DIM
    char_window: int = CHAR_WINDOW
    model_type: str = MODEL_TYPE

    @property
    def hidden_size(self) -> int:
        return self.embedding_dim + self.char_cnn_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["singletons"] = list(self.singletons)
        d["hidden_size"] = self.hidden_size
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WordEncoderConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.singletons = tuple(cfg.singletons)  # type: ignore[assignment]
        return cfg


class CharCNN(nn.Module):
    """Ma & Hovy's character CNN: embeddings, dropout, a width-3 convolution with tanh,
    max over the word's characters. A word's vector does not depend on the batch's
    padding (padded positions are zero and excluded from the max)."""

    def __init__(self, num_filters: int, embedding_dim: int = CHAR_EMBEDDING_DIM, window: int = CHAR_WINDOW,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(257, embedding_dim, padding_idx=0)  # bytes + 1 (bfcl.data.chars), 0 pads
        bound = math.sqrt(3.0 / embedding_dim)
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(embedding_dim, num_filters, window, padding=window // 2)

    def forward(self, char_ids: Tensor) -> Tensor:
        """(B, W, L) byte ids -> (B, W, num_filters); a word with no characters gets zeros."""
        B, W, L = char_ids.shape
        flat = char_ids.reshape(B * W, L)
        mask = flat != 0
        x = self.dropout(self.embedding(flat)).transpose(1, 2)  # (BW, E, L)
        y = torch.tanh(self.conv(x)).masked_fill(~mask[:, None, :], float("-inf")).amax(-1)
        y = y.masked_fill(~mask.any(-1, keepdim=True), 0.0)
        return y.reshape(B, W, -1)


class WordEncoder(nn.Module):
    """Word embeddings (+ character CNN) in the place of a transformer: ``forward`` takes
    ``input_ids`` (one id per word) and returns ``last_hidden_state`` (B, n, hidden_size)."""

    def __init__(self, config: WordEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_id)
        bound = math.sqrt(3.0 / config.embedding_dim)  # Ma & Hovy's uniform initialisation
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[config.pad_id].zero_()
        self.char_cnn = (
            CharCNN(config.char_cnn_dim, config.char_embedding_dim, config.char_window, config.dropout)
            if config.char_cnn_dim else None
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, char_ids: Tensor | None = None):
        from transformers.modeling_outputs import BaseModelOutput

        cfg = self.config
        ids = input_ids
        lo, hi = cfg.singletons
        if self.training and cfg.singleton_unk > 0 and hi > lo:
            single = (ids >= lo) & (ids < hi)
            drop = single & (torch.rand(ids.shape, device=ids.device) < cfg.singleton_unk)
            ids = ids.masked_fill(drop, cfg.unk_id)
        x = self.embedding(ids)
        if self.char_cnn is not None:
            if char_ids is None:
                raise ValueError("this word encoder has a character CNN (char_cnn_dim > 0): the batch needs char_ids")
            if char_ids.shape[:2] != input_ids.shape:
                raise ValueError(
                    f"char_ids {tuple(char_ids.shape)} does not match input_ids {tuple(input_ids.shape)}: "
                    "one row of characters per word"
                )
            x = torch.cat([x, self.char_cnn(char_ids).to(x.dtype)], dim=-1)
        return BaseModelOutput(last_hidden_state=self.dropout(x))

    @torch.no_grad()
    def load_vectors(self, tokenizer: Any, path: str | os.PathLike, lowercase: bool) -> int:
        """Copy the file's vectors into the rows of the words they name; returns how many
        rows were set. A word appearing twice keeps its first vector (word2vec files list the
        frequent form first); with ``lowercase`` the file's words are lower-cased too."""
        vocab = tokenizer.get_vocab()
        norm = _normalizer(lowercase)
        done: set[int] = set()
        for word, values in iter_word_vectors(path):
            i = vocab.get(norm(word))
            if i is None or i in done or i in (self.config.pad_id, self.config.unk_id):
                continue
            self.embedding.weight[i] = torch.tensor(values, dtype=self.embedding.weight.dtype)
            done.add(i)
        return len(done)


def _normalizer(lowercase: bool):
    if not lowercase:
        return lambda w: w
    from tokenizers import normalizers

    return normalizers.Lowercase().normalize_str


def build_word_encoder(config: Any, tokenizer: Any) -> WordEncoder:
    """A fresh encoder for the BFCL ``config`` over ``tokenizer``'s vocabulary, its rows
    initialised from ``config.word_vectors`` where given."""
    if tokenizer is None:
        raise ConfigError(
            "model.text_encoder=words builds its vocabulary from the training data: train a model "
            "(bfcl train) or load a checkpoint; there is no pretrained word encoder to load"
        )
    meta = word_metadata(tokenizer)
    enc = WordEncoder(WordEncoderConfig(
        vocab_size=len(tokenizer), embedding_dim=config.word_embedding_dim, char_cnn_dim=config.char_cnn_dim,
        dropout=config.dropout, pad_id=tokenizer.pad_token_id, unk_id=tokenizer.unk_token_id,
        singletons=tuple(meta["singletons"]),
        singleton_unk=config.word_singleton_unk,
    ))
    if config.word_vectors:
        check_word_vectors(config)
        enc.load_vectors(tokenizer, config.word_vectors, config.word_lowercase)
    return enc


def word_encoder_from_config(config_dict: dict[str, Any]) -> WordEncoder:
    """The encoder a checkpoint's ``text_encoder_config`` describes (weights come from the checkpoint)."""
    return WordEncoder(WordEncoderConfig.from_dict(config_dict))
