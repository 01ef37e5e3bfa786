"""Caption templates for the digits world and the concept parser used by RegionCLIP.

Captions are canonical (names sorted by digit, counted, de-duplicated), because a tiny CLIP trained from scratch
only learns when equal image contents always read the same way.
"""
from __future__ import annotations

import re
from collections import Counter

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def plural(name: str) -> str:
    return name + ("es" if name.endswith(("x", "s", "ch", "sh")) else "s")


def _count_word(count: int, name: str) -> str:
    """Counts never use number words: "two sixes" would name the class "two" in a caption without a two."""
    if count == 1:
        return "an" if name[0] in "aeiou" else "a"
    return "a pair of" if count == 2 else "several"


def prompt(name: str) -> str:
    """The zero-shot prompt of one class, CLIP's "a photo of a {name}" (equal to a one-object caption)."""
    return f"a photo of {_count_word(1, name)} {name}"


def make_caption(names: list[str], order: tuple[str, ...] = DIGIT_NAMES) -> str:
    """"a photo of a three and a pair of sevens" for names [seven, three, seven]."""
    counts = Counter(names)
    rank = {n: i for i, n in enumerate(order)}
    parts = [f"{_count_word(c, name)} {name if c == 1 else plural(name)}"
             for name, c in sorted(counts.items(), key=lambda kv: rank.get(kv[0], len(rank)))]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {body}"


def parse_concepts(caption: str, vocabulary: tuple[str, ...] | list[str]) -> list[str]:
    """The concepts of ``vocabulary`` named in ``caption`` (singular or plural), in vocabulary order.

    This is RegionCLIP's concept parsing: each caption contributes the known concept names it mentions.
    """
    text = " " + re.sub(r"[^a-z]+", " ", caption.lower()) + " "
    return [name for name in vocabulary if f" {name} " in text or f" {plural(name)} " in text]


def concept_pool(captions: list[str], vocabulary: tuple[str, ...] | list[str]) -> list[str]:
    """All vocabulary concepts that occur in at least one caption of the corpus."""
    seen = set()
    for caption in captions:
        seen.update(parse_concepts(caption, vocabulary))
    return [name for name in vocabulary if name in seen]
