"""Caption text normalisation used by the methods (pure Python, no tokeniser).

* :func:`clean_english` — NRCCR's English-side cleaning of source captions.
* :func:`strip_accents` / :func:`normalize_text` — what a BERT tokenizer with ``do_lower_case=True`` does to its
  input: lowercase, NFD decomposition, combining marks dropped. Note the side effect on Japanese: voiced kana
  lose their (han)dakuten ("が" -> "か", "パン" -> "ハン"), because NFD splits them into base kana + combining mark.
  Chinese is unaffected. Use ``strip_accents=False`` to keep them.
* :func:`pre_caption` — CCLM / CCR^k caption pre-processing with a word limit.
"""
from __future__ import annotations

import re
import unicodedata

__all__ = ["clean_english", "strip_accents", "normalize_text", "pre_caption"]

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
_PRE_CAPTION_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def clean_english(text: str) -> str:
    """NRCCR English cleaning: keep ``[A-Za-z0-9]``, lowercase, end with punctuation, capitalise.

    Args:
        text: one English caption.

    Returns:
        The cleaned caption, e.g. ``"A man, in a hat!"`` -> ``"A man in a hat."``.
    """
    words = _NON_ALNUM.sub(" ", text).lower().split()
    out = " ".join(words)
    if not out.endswith((".", "?", "!")):
        out += "."
    return out.capitalize()


def strip_accents(text: str) -> str:
    """Drop combining marks after NFD decomposition (BERT ``do_lower_case`` accent stripping).

    ``"für"`` -> ``"fur"``, ``"příliš"`` -> ``"prilis"``, and Japanese ``"が"`` -> ``"か"`` (dakuten lost).
    """
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def normalize_text(text: str, *, lowercase: bool = True, strip_accents: bool = True) -> str:
    """Lowercase and/or strip accents, in the order a BERT uncased tokenizer applies them.

    Args:
        text: a caption in any language.
        lowercase: lowercase first (``str.lower``).
        strip_accents: NFD + drop combining marks (see the module note on Japanese dakuten).
    """
    if lowercase:
        text = text.lower()
    if strip_accents:
        text = globals()["strip_accents"](text)
    return text


def pre_caption(caption: str, max_words: int = 30) -> str:
    """CCLM ``pre_caption``: lowercase, punctuation and ``-``/``/`` to spaces, squeeze spaces, keep ``max_words``.

    Args:
        caption: raw caption.
        max_words: number of whitespace-separated words kept (30 retrieval, 40 pre-training, 80 IGLUE).

    Raises:
        ValueError: ``max_words < 1``.
    """
    if max_words < 1:
        raise ValueError(f"max_words: expected an int >= 1, got {max_words}")
    caption = _PRE_CAPTION_PUNCT.sub(" ", caption.lower()).replace("-", " ").replace("/", " ")
    caption = _SPACES.sub(" ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption
