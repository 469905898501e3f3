"""Split raw tweet text into words the way the Twitter-2015/2017 (UMT) data was
tokenised, keeping character offsets so predictions map back onto the text.

The two datasets were tokenised differently, and a model should see raw text
split the way its training data was, hence two Twitter styles and a generic
one (training infers which fits the data: ``bfcl.data.tokenstyle``):

``"twitter2017"`` (default; the data looks like a consistent regex tokeniser)
    ``#`` and ``@`` are tokens of their own (``# NBA``, ``@ user``); every
    punctuation mark, apostrophe (``don ' t``, ``Trump ' s``), hyphen, slash
    and emoji code point is its own token, including skin-tone modifiers,
    regional-indicator letters, U+FE0F and U+200D between emoji; a number
    keeps one thousands/decimal separator (``10,000``, ``2.99``) or a trailing
    comma (``May 21, 2016`` -> ``21,``) and is split from letters after it
    (``5th`` -> ``5 th``); emoticons such as ``:)``, ``:-(``, ``:D`` stay
    whole; ``_`` is part of a word. The data decoded HTML entities to one
    token (``&``), so ``&amp;`` stays one token (offsets index the raw text,
    so it is not decoded). URLs lose trailing sentence punctuation.

``"twitter2015"`` (the data looks like whitespace splitting plus punctuation)
    ``#tag``, ``@user`` (without a trailing ``:``) and ``$CASHTAG`` stay whole,
    but ``_`` is split off (``@ESPN_FirstTake`` -> ``@ESPN _ FirstTake``);
    ``. , : ; ! ? " ' ( ) [ ] { } | + ~ = ^ % $`` and curly quotes are split
    off, also inside numbers (``2 . 99``, ``10 , 000``) and contractions
    (``I ' m``); hyphens, slashes, ``&``, ``*``, ``…`` and emoji stay attached
    (``triple-digit``, ``b/c``, ``&amp ;``, ``H&amp ; M``, ``htt…``); a URL
    runs to the next whitespace; a free-standing ``...`` stays whole.

``"generic"`` (data that matches neither Twitter set, e.g. WNUT-like CoNLL files)
    as ``"twitter2017"`` (punctuation, apostrophes, hyphens and each emoji code
    point split off), except that ``@user``, ``#tag`` and ``$CASHTAG`` stay
    whole, a number keeps its inner separators but not a trailing comma
    (``10,000``, ``2.99``, ``21`` ``,``) and letters after digits stay
    attached (``5th``).

In every style URLs (``http://``, ``https://``, ``www.``, and truncated
``http:…`` forms, as in Twitter-2015) are one token, and the tokens cover every
non-whitespace character exactly once: nothing is dropped, and re-tokenising
the tokens joined by spaces gives them back. Separators are exactly the
characters ``str.isspace`` accepts (tabs, newlines, U+00A0...). Invisible
non-space characters (U+FE0F, U+200B, U+200D, U+00AD) are tokens of their
own, because the data keeps them so (``bfcl.data.alignment`` encodes them as
the unk token); U+00AD and U+200C/U+200D inside a word stay in the word, and
so do combining marks (``e`` + U+0301, Devanagari vowel signs).

Deliberate deviations from Twitter-2015: it split ``https://`` links
(``https : //t . co/x``), we keep every URL whole (a URL is never an entity);
it kept ``_`` inside 22 mentions (split it in ~600 sentences) and left ``.``/``!`` attached in a
handful of words (``development.``); we follow its majority rule.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

TweetStyle = Literal["twitter2015", "twitter2017", "generic"]
STYLES: tuple[TweetStyle, ...] = ("twitter2015", "twitter2017", "generic")
DEFAULT_STYLE: TweetStyle = "twitter2017"


@dataclass(frozen=True)
class Token:
    """One word of a tweet: ``text == source[start:end]``."""

    text: str
    start: int
    end: int


# Variation selectors and the keycap mark are Mn/Me but the data splits them
# off emoji, so they are never glued into a word.
_NOT_WORD_MARKS = {*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x20E3}


@cache
def _mark_class() -> str:
    """Regex class body of combining marks, so ``é`` written as ``e`` + U+0301,
    or Devanagari vowel signs, stay inside their word (``\\w`` excludes marks).
    Built lazily: scanning the code space takes ~0.1 s."""
    ranges: list[list[int]] = []
    for cp in range(sys.maxunicode + 1):
        if cp in _NOT_WORD_MARKS or unicodedata.category(chr(cp))[0] != "M":
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges
    )


# URLs run to the next whitespace, less trailing sentence punctuation (kept
# as tokens); ``https?:`` alone also takes Twitter's truncated ``http:…``.
_URL = r"(?:https?:|www\.)\S*?(?=[.,;:!?)\]}\"'”’]*(?!\S))"
_EMOTICON = r"(?<![\w:])[:;=][-o^']?[()\[\]DPpOo/\\|*3](?!\w)"
# The HTML entities Twitter escapes. Twitter-2017 decoded them to one
# character token ("&"), so that style keeps an entity whole; Twitter-2015
# split "&amp ;", which its glue/split rules reproduce.
_ENTITY = r"&(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);"


@cache
def _regex(style: TweetStyle) -> re.Pattern[str]:
    """One alternation per style, tried left to right at each position."""
    word = rf"(?:\w|[{_mark_class()}])"
    # Soft hyphen and ZWNJ/ZWJ stay inside a word (hyphenation hints,
    # Persian/Indic spelling); elsewhere they are tokens of their own.
    joined_word = rf"{word}+(?:[\u00ad\u200c\u200d]+{word}+)*"
    if style == "generic":
        parts = [
            _URL,
            _EMOTICON,
            _ENTITY,
            rf"[@#]{word}+|\$[A-Za-z]\w*",  # @user #tag $CASHTAG
            r"\d+(?:[.,]\d+)+(?!\w)",  # 10,000 2.99 ; "21," -> 21 ,
            joined_word,
            r"\S",
        ]
    elif style == "twitter2017":
        parts = [
            _URL,
            _EMOTICON,
            _ENTITY,
            r"\d+(?:,\d*|\.\d+)?(?!\w)" r"|\d+",  # 10,000 2.99 21, ; 5th -> 5 th
            joined_word,
            r"\S",
        ]
    else:
        split = r"""[.,:;!?"'()\[\]{}|+~=^%$\\`“”‘’«»_]"""
        glue = rf"(?:(?!{split}|\s).|\$(?=[A-Za-z]))"  # cashtags keep their $
        parts = [
            r"(?:https?:|www\.)\S*",  # as in the data: 'http://t.co/x"' is one token
            r"(?<!\S)\.{2,}(?!\S)",  # a free-standing "..." stays whole, "so..." -> "so . . ."
            rf"{glue}+",
            r"\S",
        ]
    return re.compile("|".join(f"(?:{p})" for p in parts))


def resolve_style(style: str) -> TweetStyle:
    """A style name; ``"auto"`` (a model config whose style training has not yet
    inferred, e.g. a model built in memory) means :data:`DEFAULT_STYLE`."""
    if style == "auto":
        return DEFAULT_STYLE
    if style not in STYLES:
        raise ValueError(f"unknown tweet style {style!r}; expected one of {STYLES} or 'auto'")
    return style  # type: ignore[return-value]


def tokenize_tweet(text: str, style: TweetStyle = DEFAULT_STYLE) -> list[Token]:
    """Split ``text`` into UMT-style words with character offsets.

    See the module docstring for the two ``style`` conventions. Offsets index
    ``text`` itself (no normalisation), tokens are in order, never overlap,
    never contain whitespace, and together cover every non-space character.
    """
    return [Token(m.group(), m.start(), m.end()) for m in _regex(resolve_style(style)).finditer(text)]


def tokens_from_input(text_or_tokens: str | Sequence[str], style: TweetStyle = DEFAULT_STYLE) -> list[Token]:
    """Accept what an API caller sends: raw text (tokenised with
    :func:`tokenize_tweet`) or pre-split words, which are kept exactly as given
    and located as if joined by single spaces (``" ".join(words)``), so a word
    is never re-split or dropped. Empty or whitespace-only text gives ``[]``."""
    if isinstance(text_or_tokens, str):
        return tokenize_tweet(text_or_tokens, style=style)
    resolve_style(style)
    tokens: list[Token] = []
    pos = 0
    for i, word in enumerate(text_or_tokens):
        if not isinstance(word, str):
            raise TypeError(f"token {i} is {type(word).__name__}, expected str")
        tokens.append(Token(word, pos, pos + len(word)))
        pos += len(word) + 1
    return tokens
