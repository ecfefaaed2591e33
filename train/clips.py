"""Stage 2's clips, assembled from stage 1's labelled frames instead of rendered anew.

The vision side is frozen in stage 2 and encodes each frame on its own, so a clip is a list of pool frames: a
still picture held for a few seconds, a needle (one item held 3-6 s among scenes of background-only frames, each
scene one frame held 4-90 s, as a 1-fps video of a static scene is), or a sequence of items between scenes
(first / last / how many). Only the distinct frames go through the vision tower and pre-fusion; the LLM sees every
position. That makes 1,000-frame clips affordable on a CPU.

Questions are asked in many phrasings (the model is asked in users' words, not one template's), and answers are
the canonical value: a colour, a shape, a digit, a word in capitals, a count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from train.data import HEADS
from vidmini.demo.questions import QA
from vidmini.demo.world import COLOUR_NAMES, DIGITS, SHAPES, WORDS

HEAD_NAMES = list(HEADS)


@dataclass(frozen=True)
class Seen:
    """What one pool frame shows, from its stage 1 labels."""

    shapes: dict[str, str]  # shape -> colour
    digit: tuple[str, str] | None  # (digit, colour)
    word: tuple[str, str] | None  # (word, colour)

    @property
    def count(self) -> int:
        return len(self.shapes) + (self.digit is not None) + (self.word is not None)

    def names(self) -> list[str]:
        """The words that name what is shown, for the frame token's word-embedding target."""
        out = [w for shape, colour in self.shapes.items() for w in (colour, shape)]
        for item in (self.digit, self.word):
            if item is not None:
                out += [item[1], item[0]]
        return out


def seen(heads: np.ndarray) -> Seen:
    h = {name: int(v) for name, v in zip(HEAD_NAMES, heads)}
    shapes = {s: COLOUR_NAMES[h[f"shape_{s}"] - 1] for s in SHAPES if h[f"shape_{s}"]}
    digit = (DIGITS[h["digit"] - 1], COLOUR_NAMES[h["digit_colour"] - 1]) if h["digit"] else None
    word = (WORDS[h["word"] - 1], COLOUR_NAMES[h["word_colour"] - 1]) if h["word"] else None
    return Seen(shapes, digit, word)


def pick(rng: random.Random, options: list[str]) -> str:
    return rng.choice(options)


# ---- questions about what is on screen (a still clip, or the one item of a needle) ---------------------------

def colour_of_shape(s: Seen, rng: random.Random) -> QA | None:
    if not s.shapes:
        return None
    shape = rng.choice(sorted(s.shapes))
    q = pick(rng, [f"What colour is the {shape}?", f"What color is the {shape}?", f"Which colour is the {shape}?",
                   f"What is the colour of the {shape}?", f"What color is the {shape} shown?",
                   f"Tell me the colour of the {shape}.", f"The {shape} is which color?"])
    return QA(q, s.shapes[shape], "colour_of_shape")


def shape_of_colour(s: Seen, rng: random.Random) -> QA | None:
    by_colour: dict[str, list[str]] = {}
    for shape, colour in s.shapes.items():
        by_colour.setdefault(colour, []).append(shape)
    options = sorted(c for c, shapes in by_colour.items() if len(shapes) == 1)
    if not options:
        return None
    colour = rng.choice(options)
    q = pick(rng, [f"What shape is {colour}?", f"Which shape is {colour}?", f"What is the {colour} shape?",
                   f"Which shape is drawn in {colour}?", f"What {colour} shape is shown?",
                   f"Name the {colour} shape."])
    return QA(q, by_colour[colour][0], "shape_of_colour")


def which_shape(s: Seen, rng: random.Random) -> QA | None:
    if len(s.shapes) != 1:
        return None
    q = pick(rng, ["What shape is shown?", "Which shape appears?", "What shape appears in the video?",
                   "What shape do you see?", "What shape is on the screen?", "Which shape is it?", "Name the shape."])
    return QA(q, next(iter(s.shapes)), "which_shape")


def which_digit(s: Seen, rng: random.Random) -> QA | None:
    if s.digit is None:
        return None
    q = pick(rng, ["What digit is shown?", "Which number appears?", "What number is on the screen?",
                   "What number is shown?", "Which digit do you see?", "What is the number?",
                   "Read the number on the screen.", "Which digit appears in the video?", "What number appears?"])
    return QA(q, s.digit[0], "which_digit")


def which_word(s: Seen, rng: random.Random) -> QA | None:
    if s.word is None:
        return None
    q = pick(rng, ["What word is shown?", "Which word appears?", "What word is written on the screen?",
                   "What does the text say?", "Read the word on the screen.", "What is written?",
                   "Which word do you see?", "What word appears in the video?"])
    return QA(q, s.word[0], "which_word")


def colour_of_text(s: Seen, rng: random.Random) -> QA | None:
    kinds = [k for k, item in (("digit", s.digit), ("word", s.word)) if item is not None]
    if not kinds:
        return None
    kind = rng.choice(kinds)
    value, colour = s.digit if kind == "digit" else s.word
    noun = "number" if kind == "digit" and rng.random() < 0.5 else kind
    q = pick(rng, [f"What colour is the {noun}?", f"What color is the {kind} {value}?",
                   f"Which colour is the {noun} written in?", f"What colour is the {value}?"])
    return QA(q, colour, "colour_of_text")


ON_SCREEN = [colour_of_shape, shape_of_colour, which_shape, which_digit, which_word, colour_of_text]


def on_screen_questions(s: Seen, rng: random.Random, most: int = 3) -> list[QA]:
    makers = ON_SCREEN[:]
    rng.shuffle(makers)
    out = [qa for maker in makers if (qa := maker(s, rng)) is not None]
    return out[:most]


# ---- questions about order --------------------------------------------------------------------------------

def label_of(s: Seen, kind: str) -> str:
    if kind == "shape":
        return next(iter(s.shapes))
    return (s.digit if kind == "digit" else s.word)[0]


def identity(s: Seen, kind: str) -> tuple[str, str]:
    """What makes two single-item frames the same item to a viewer: a shape by kind and colour, a digit or a word
    by its value (its colour aside), as the product's questions name them."""
    if kind == "shape":
        shape, colour = next(iter(s.shapes.items()))
        return shape, colour
    return label_of(s, kind), ""


def order_question(items: list[Seen], kind: str, rng: random.Random) -> QA | None:
    which = rng.choice(["first", "last"])
    end = 0 if which == "first" else -1
    if kind == "shape" and rng.random() < 0.5:
        colours = [next(iter(s.shapes.values())) for s in items]
        if len(set(colours)) < 2:
            return None
        q = pick(rng, [f"What colour is the {which} shape shown?", f"Which colour is the {which} shape?",
                       f"What color is the shape that appears {which}?"])
        return QA(q, colours[end], which)
    labels = [label_of(s, kind) for s in items]
    if len(set(labels)) < 2:
        return None
    noun = {"shape": "shape", "digit": pick(rng, ["digit", "number"]), "word": "word"}[kind]
    q = pick(rng, [f"Which {noun} appears {which}?", f"What is the {which} {noun} shown?",
                   f"Which {noun} is shown {which}?", f"What {noun} comes {which}?"])
    return QA(q, labels[end], which)


def count_question(items: list[Seen], kind: str, rng: random.Random) -> QA:
    """How many times one item is shown. A shape is named with its colour unless its kind alone is unambiguous
    among the items (then either way)."""
    keys = [identity(s, kind) for s in items]
    target = rng.choice(keys)
    n = keys.count(target)
    value, colour = target
    if kind == "shape":
        alone = all(k[1] == colour for k in keys if k[0] == value)
        what = f"a {value}" if alone and rng.random() < 0.5 else f"a {colour} {value}"
    else:
        what = {"digit": pick(rng, [f"the number {value}", f"the digit {value}"]), "word": f"the word {value}"}[kind]
    q = pick(rng, [f"How many times does {what} appear?", f"How often is {what} shown?",
                   f"How many times is {what} shown?", f"Count the times {what} appears."])
    return QA(q, str(n), "count")


# ---- clips --------------------------------------------------------------------------------------------------

@dataclass
class Clip:
    kind: str  # still | needle | sequence
    frames: list[int]  # pool frame index at each 1-fps position
    questions: list[QA]
    needle_at: int = -1  # first position of the needle (needle clips)


KINDS = ("shape", "digit", "word")


class Catalogue:
    """The pool's frames by what they show: none, exactly one item (by kind), anything.

    `kinds` weights the kind of item a clip is about (e.g. {"shape": 1, "digit": 1.5, "word": 2}: words and digits
    are what stage 2 hands to the LLM slowest): a still shows a frame that shows an item of that kind (others may
    share it), a needle or a sequence is made of items of that kind. None: the three kinds alike, and stills drawn
    from every frame that shows anything (the clips of earlier runs, draw for draw)."""

    def __init__(self, heads: np.ndarray, kinds: dict[str, float] | None = None, count_share: float = 0.3):
        self.seen = [seen(h) for h in heads]
        self.count_share = count_share
        self.empty = [i for i, s in enumerate(self.seen) if s.count == 0]
        self.any = [i for i, s in enumerate(self.seen) if s.count > 0]
        self.single = {k: [i for i, s in enumerate(self.seen) if s.count == 1 and self._kind(s) == k] for k in KINDS}
        if kinds is not None and (set(kinds) - set(KINDS) or not any(v > 0 for v in kinds.values())):
            raise ValueError(f"kinds weights {kinds}: a weight for some of {KINDS}, one of them positive")
        self.kinds = kinds
        self.showing = {k: [i for i in self.any if self._shows(self.seen[i], k)] for k in KINDS}
        self.alike: dict[tuple, list[int]] = {}  # (kind, identity) -> the single-item frames that show it
        for k in KINDS:
            for i in self.single[k]:
                self.alike.setdefault((k, identity(self.seen[i], k)), []).append(i)

    @classmethod
    def _kind(cls, s: Seen) -> str:
        """The first kind, in KINDS' order, that a frame showing something shows."""
        return next(k for k in KINDS if cls._shows(s, k))

    @staticmethod
    def _shows(s: Seen, kind: str) -> bool:
        return bool(s.shapes) if kind == "shape" else (s.digit if kind == "digit" else s.word) is not None

    def kind(self, rng: random.Random) -> str:
        """The kind of item a clip is about."""
        if self.kinds is None:
            return rng.choice(list(KINDS))
        return rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]

    def backgrounds(self, rng: random.Random, length: int) -> list[int]:
        """`length` positions of background-only scenes, each one frame held 4-90 s."""
        out: list[int] = []
        while len(out) < length:
            out += [rng.choice(self.empty)] * rng.randint(4, 90)
        return out[:length]

    def still(self, rng: random.Random) -> Clip:
        i = rng.choice(self.any if self.kinds is None else self.showing[self.kind(rng)])
        return Clip("still", [i] * rng.choice([1, 1, 2, 3]), on_screen_questions(self.seen[i], rng))

    def needle(self, rng: random.Random, length: int) -> Clip:
        kind = self.kind(rng)
        i = rng.choice(self.single[kind])
        hold = rng.randint(3, 6)
        frames = self.backgrounds(rng, max(length, hold + 1))
        at = rng.randrange(0, len(frames) - hold + 1)
        frames[at : at + hold] = [i] * hold
        # one question on long clips: each question is a pass of the LLM over every position
        questions = on_screen_questions(self.seen[i], rng, most=2 if len(frames) < 100 else 1)
        return Clip("needle", frames, questions, at)

    def sequence(self, rng: random.Random, length: int) -> Clip:
        """2-4 appearances of 2-3 items of one kind between scenes; an item shown again is another frame of the
        same item where the pool has one (another place, size, background), as a video shows it again."""
        kind = self.kind(rng)
        pool = [identity(self.seen[rng.choice(self.single[kind])], kind) for _ in range(rng.randint(2, 3))]
        shown = [rng.choice(self.alike[kind, rng.choice(pool)]) for _ in range(rng.randint(2, 4))]
        gaps = max(1, length // (len(shown) + 1))
        frames: list[int] = self.backgrounds(rng, rng.randint(0, gaps))
        for i in shown:
            frames += [i] * rng.randint(3, 6)
            frames += self.backgrounds(rng, rng.randint(1, gaps))
        items = [self.seen[i] for i in shown]
        qas = [qa for qa in (order_question(items, kind, rng),) if qa is not None]
        if rng.random() < self.count_share:
            qas.append(count_question(items, kind, rng))
        return Clip("sequence", frames, qas)


def needle_length(rng: random.Random, longest: int) -> int:
    """Mostly short (cheap) clips, with a tail of long ones up to `longest` frames: log-uniform."""
    return int(round(np.exp(rng.uniform(np.log(12), np.log(max(13, longest))))))
