"""The vocabulary of the procedural world: categories, colours, attributes, captions."""

from __future__ import annotations

import random

# category -> synonyms used in captions (the first is the canonical name)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "cube": ("cube", "box", "block"),
    "sphere": ("sphere", "ball", "orb"),
    "cylinder": ("cylinder", "column", "tube"),
    "cone": ("cone", "conical shape"),
    "torus": ("torus", "donut", "ring"),
    "pyramid": ("pyramid", "square pyramid"),
    "capsule": ("capsule", "pill"),
    "chair": ("chair", "seat"),
    "table": ("table", "desk"),
    "mug": ("mug", "cup"),
    "lamp": ("lamp", "desk lamp", "floor lamp"),
    "snowman": ("snowman", "snow man"),
    "dumbbell": ("dumbbell", "barbell", "weight"),
}
PRIMITIVES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "capsule")
COMPOSITES = ("chair", "table", "mug", "lamp", "snowman", "dumbbell")

# colour -> (linear-ish sRGB in [0, 1], synonyms)
COLORS: dict[str, tuple[tuple[float, float, float], tuple[str, ...]]] = {
    "red": ((0.85, 0.10, 0.10), ("red", "scarlet")),
    "green": ((0.12, 0.65, 0.20), ("green",)),
    "blue": ((0.12, 0.28, 0.90), ("blue",)),
    "yellow": ((0.95, 0.85, 0.10), ("yellow",)),
    "orange": ((0.97, 0.50, 0.05), ("orange",)),
    "purple": ((0.52, 0.18, 0.72), ("purple", "violet")),
    "pink": ((0.97, 0.52, 0.72), ("pink",)),
    "white": ((0.94, 0.94, 0.94), ("white",)),
    "black": ((0.07, 0.07, 0.07), ("black",)),
    "gray": ((0.50, 0.50, 0.50), ("gray", "grey")),
    "brown": ((0.45, 0.27, 0.10), ("brown",)),
    "cyan": ((0.10, 0.80, 0.85), ("cyan", "turquoise")),
}

# attribute -> value -> (geometry factor, synonyms); "normal" values are never captioned
ATTRIBUTES: dict[str, dict[str, tuple[float, tuple[str, ...]]]] = {
    "height": {"tall": (1.6, ("tall",)), "short": (0.6, ("short", "squat")), "normal": (1.0, ())},
    "width": {"wide": (1.5, ("wide",)), "thin": (0.6, ("thin", "narrow")), "normal": (1.0, ())},
    "size": {"large": (1.0, ("large", "big")), "small": (0.55, ("small", "tiny")), "normal": (0.78, ())},
}

# the part a second colour goes to, per composite category
SECONDARY_PART: dict[str, str] = {
    "chair": "legs",
    "table": "legs",
    "mug": "handle",
    "lamp": "base",
    "snowman": "hat",
    "dumbbell": "bar",
}

# {a}: attribute words, {c}: colour phrase, {n}: category noun
TEMPLATES: tuple[str, ...] = (
    "a {a}{c} {n}",
    "a 3D model of a {a}{c} {n}",
    "a render of a {a}{c} {n}",
    "a {a}{n} that is {c}",
    "a {a}{n} in {c}",
    "{c} {a}{n}",
    "a photo of a {a}{c} {n}",
    "an object: a {a}{c} {n}",
    "one {a}{c} {n}",
    "a {a}{c} {n} on its own",
    "there is a {a}{c} {n}",
    "a simple {a}{c} {n}",
)


def _article(text: str) -> str:
    """Fix 'a' before a vowel sound at the start of a caption ('a orange' -> 'an orange')."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "A") and words[i + 1][:1].lower() in "aeio":
            words[i] = words[i] + "n"
    return " ".join(words)


def caption(
    category: str,
    colors: tuple[str, ...],
    attributes: dict[str, str],
    rng: random.Random,
) -> str:
    """A caption of the labels, template and synonyms drawn from ``rng``."""
    noun = rng.choice(CATEGORIES[category])
    words = [rng.choice(ATTRIBUTES[k][v][1]) for k, v in attributes.items() if v != "normal"]
    rng.shuffle(words)
    attr = "".join(w + " " for w in words)
    primary = rng.choice(COLORS[colors[0]][1])
    template = rng.choice(TEMPLATES)
    if len(colors) > 1:
        secondary = rng.choice(COLORS[colors[1]][1])
        part = SECONDARY_PART[category]
        if rng.random() < 0.5:
            return _article(f"a {attr}{primary} {noun} with {secondary} {part}")
        template = rng.choice(("a {a}{c} {n}", "a {a}{n} in {c}", "a 3D model of a {a}{c} {n}"))
        primary = f"{primary} and {secondary}"
    return _article(template.format(a=attr, c=primary, n=noun))
