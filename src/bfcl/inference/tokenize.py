"""Raw text -> words moved to ``bfcl.data.tokenize`` (the processor, below inference and training, uses it);
these names stay importable from here."""

from bfcl.data.tokenize import DEFAULT_STYLE, STYLES, Token, TweetStyle, resolve_style, tokenize_tweet, tokens_from_input

__all__ = ["DEFAULT_STYLE", "STYLES", "Token", "TweetStyle", "resolve_style", "tokenize_tweet", "tokens_from_input"]
