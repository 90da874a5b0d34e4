"""The one definition of how text becomes token ids: cleaning, truncation, head tokens, max length, text pair.

Training writes it beside the model (``preprocessing.json`` in the save_pretrained folder); evaluation, the
ONNX export's parity check, the Triton tokenizer model and every prediction read it back and encode through
``TextEncoder``, so a served model sees exactly the token ids the trained model saw.

This module imports only the standard library (the ``tokenizers`` object is passed in): publication copies this
very file into the Triton tokenizer model's version folder, where the trainer package is not installed.

Cleaning is an ordered list of named steps from ``CLEANING_STEPS``: add a normalisation there (a function from
str to str) and a job may name it; the names are recorded, so serving applies the same steps in the same order.
"""

from __future__ import annotations

import html
import json
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

FILE = "preprocessing.json"
FORMAT_VERSION = 1
TRUNCATIONS = ("head", "tail", "head_tail")

_TAG = re.compile(r"<[^>]+>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SYMBOL = re.compile(r"[^\w\s@#$]")  # \w: letters and digits of every script, and "_"
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SPACE = re.compile(r"\s+")


def nfkc(text: str) -> str:
    """Unicode NFKC: full-width letters and digits to ASCII, compatibility forms (ligatures, ...) unified."""
    return unicodedata.normalize("NFKC", text)


def lowercase(text: str) -> str:
    """Lower case, for text whose case carries no meaning."""
    return text.lower()


def strip_html(text: str) -> str:
    """HTML tags out (each becomes a space), entities decoded: ``good<br />fun &amp; long`` -> ``good fun & long``."""
    return html.unescape(_TAG.sub(" ", text))


def strip_urls(text: str) -> str:
    """Web addresses (``http://``, ``https://``, ``www.``) out, each becomes a space."""
    return _URL.sub(" ", text)


def join_thousands(text: str) -> str:
    """Thousands separators between digits out: ``1,000`` -> ``1000``, ``12,345,678`` -> ``12345678``."""
    return _THOUSANDS.sub("", text)


def strip_symbols(text: str) -> str:
    """Every character that is not a letter, digit, whitespace, ``@``, ``#``, ``$`` or ``_`` out (punctuation and
    emoji too): ``Great!!! :-) #win @bob $5`` -> ``Great  #win @bob $5``."""
    return _SYMBOL.sub("", text)


def normalize_whitespace(text: str) -> str:
    """Runs of spaces, tabs and newlines to one space, none at either end."""
    return _SPACE.sub(" ", text).strip()


# Named text normalisations, applied in the recorded order before tokenization (docs/recipes.md).
CLEANING_STEPS: dict[str, Callable[[str], str]] = {
    f.__name__: f
    for f in (nfkc, lowercase, strip_html, strip_urls, join_thousands, strip_symbols, normalize_whitespace)
}


def clean(text: str, steps: Sequence[str]) -> str:
    """``text`` after each named cleaning step, in order."""
    for name in steps:
        text = CLEANING_STEPS[name](text)
    return text


@dataclass(frozen=True)
class Preprocessing:
    """How one model turns text into token ids.

    ``truncation`` keeps the first (``head``), the last (``tail``) or the first ``head_tokens`` and the last
    ``max_length - head_tokens - specials`` tokens (``head_tail``, Sun et al. 2019) of a text longer than
    ``max_length`` (special tokens included). Text pairs are cut longest-first, from the end for ``head`` and
    ``head_tail``, from the start for ``tail``.
    """

    max_length: int
    truncation: str = "head"
    head_tokens: int = 64
    text_pair: bool = False
    cleaning: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation {self.truncation!r}: expected one of {', '.join(TRUNCATIONS)}")
        if self.max_length < 2:
            raise ValueError(f"max_length {self.max_length}: expected at least 2")
        unknown = [s for s in self.cleaning if s not in CLEANING_STEPS]
        if unknown:
            raise ValueError(f"cleaning steps {unknown}: expected names from {sorted(CLEANING_STEPS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self), "cleaning": list(self.cleaning)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        version = raw.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"{FILE} format_version {version}: this code reads up to {FORMAT_VERSION}")
        return cls(
            max_length=int(raw["max_length"]),
            truncation=str(raw.get("truncation", "head")),
            head_tokens=int(raw.get("head_tokens", 64)),
            text_pair=bool(raw.get("text_pair", False)),
            cleaning=tuple(raw.get("cleaning", ())),
        )

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``folder/preprocessing.json``; returns its path."""
        path = os.path.join(folder, FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path


def load(folder: str | os.PathLike) -> Preprocessing | None:
    """The definition recorded in ``folder``, or None for a model saved before it was recorded."""
    path = os.path.join(folder, FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return Preprocessing.from_dict(json.load(f))


def legacy(max_length: int, text_pair: bool = False) -> Preprocessing:
    """What serving did before the definition was recorded: the first ``max_length`` tokens, no cleaning."""
    return Preprocessing(max_length=max_length, truncation="head", text_pair=text_pair)


class TextEncoder:
    """Texts (and pairs) -> unpadded token ids and type ids under one ``Preprocessing``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (a fast Hugging Face tokenizer's ``backend_tokenizer``, or
            ``Tokenizer.from_file("tokenizer.json")``). It is copied: truncation and padding are set here.
        preprocessing: the model's definition.
    """

    def __init__(self, tokenizer: Any, preprocessing: Preprocessing):
        self.prep = preprocessing
        self.tokenizer = type(tokenizer).from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pair_tokenizer = self.tokenizer
        if preprocessing.truncation == "head_tail":
            # head_tail keeps the ends of one text; a pair is cut longest-first from the end instead.
            self.pair_tokenizer = type(tokenizer).from_str(self.tokenizer.to_str())
            self.pair_tokenizer.enable_truncation(preprocessing.max_length, direction="right")
        else:
            side = "left" if preprocessing.truncation == "tail" else "right"
            self.tokenizer.enable_truncation(preprocessing.max_length, direction=side)

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and token type ids of each text (no padding)."""
        steps = self.prep.cleaning
        texts = [clean(t, steps) for t in texts]
        if pairs is not None:
            pairs = [clean(t, steps) for t in pairs]
            encodings = self.pair_tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
            return [e.ids for e in encodings], [e.type_ids for e in encodings]
        encodings = self.tokenizer.encode_batch(texts)
        if self.prep.truncation != "head_tail":
            return [e.ids for e in encodings], [e.type_ids for e in encodings]
        ids, types = [], []
        for e in encodings:
            keep = self._head_tail(e.special_tokens_mask)
            ids.append([e.ids[i] for i in keep])
            types.append([e.type_ids[i] for i in keep])
        return ids, types

    def _head_tail(self, special: Sequence[int]) -> list[int]:
        """Positions kept: the leading special tokens and ``head_tokens``, then the end (trailing specials)."""
        n, limit = len(special), self.prep.max_length
        if n <= limit:
            return list(range(n))
        lead = next((i for i, s in enumerate(special) if not s), n)
        head = min(lead + self.prep.head_tokens, limit)
        return list(range(head)) + list(range(n - (limit - head), n))
