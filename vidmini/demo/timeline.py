"""What is on screen when: items (a red star, the digit 7, the word HOUSE) shown as events over background scenes.

A Timeline is plain data, independent of pixels: render.py draws it, questions.py asks about it. Every event lasts
at least MIN_EVENT_S seconds, so at 1 fps each one is seen in at least 3 frames.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from vidmini.demo.world import COLOUR_NAMES, COLOURS, DIGITS, SHAPES, WORDS

MIN_EVENT_S = 3.0


@dataclass(frozen=True)
class Item:
    kind: str  # "shape" | "digit" | "word"
    value: str  # "star", "7", "HOUSE"
    colour: str  # a name in world.COLOURS

    def describe(self) -> str:
        if self.kind == "shape":
            return f"a {self.colour} {self.value}"
        return f"the {self.kind} {self.value} in {self.colour}"


@dataclass
class Event:
    item: Item
    start: float  # seconds, inclusive
    end: float  # seconds, exclusive
    x0: float  # centre at start, as a fraction of the width / height
    y0: float
    x1: float  # centre at end (equal to x0, y0 for a still item)
    y1: float
    size: float  # height as a fraction of the frame's shorter side
    font: int = 0  # index into render.fonts() for text items; a style seed for shapes

    def visible(self, t: float) -> bool:
        return self.start <= t < self.end

    def centre(self, t: float) -> tuple[float, float]:
        a = 0.0 if self.end <= self.start else (t - self.start) / (self.end - self.start)
        return self.x0 + a * (self.x1 - self.x0), self.y0 + a * (self.y1 - self.y0)


@dataclass
class Scene:
    """A background between two cuts."""

    start: float
    end: float
    kind: str  # "solid" | "gradient" | "noise" | "stripes"
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    seed: int


@dataclass
class Timeline:
    duration: float
    scenes: list[Scene]
    events: list[Event] = field(default_factory=list)

    def scene_at(self, t: float) -> Scene:
        for scene in self.scenes:
            if scene.start <= t < scene.end:
                return scene
        return self.scenes[-1]

    def visible(self, t: float) -> list[Event]:
        return [e for e in self.events if e.visible(t)]


# ---- random construction ------------------------------------------------------------------------------------

def random_rgb(rng: random.Random) -> tuple[int, int, int]:
    """A background colour: mostly muted (greys, dull tints, dark or light), a quarter of the time any colour.
    Items are drawn in saturated named colours, so on most backgrounds colour alone separates figure from
    ground; the saturated quarter keeps the model from relying on that."""
    pick = rng.random()
    if pick < 0.3:
        g = rng.choice([0, 20, 60, 90, 128, 160, 200, 230, 255])
        return (g, g, g)
    if pick < 0.75:
        base = rng.randint(30, 220)
        return tuple(max(0, min(255, base + rng.randint(-35, 35))) for _ in range(3))
    return tuple(rng.randint(0, 255) for _ in range(3))


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def random_scene(rng: random.Random, start: float, end: float) -> Scene:
    kind = rng.choices(["solid", "gradient", "noise", "stripes"], weights=[4, 3, 2, 1])[0]
    a = random_rgb(rng)
    # The second colour stays near the first, so an item's contrast against the scene is decided by one colour.
    b = tuple(max(0, min(255, c + rng.randint(-50, 50))) for c in a)
    return Scene(start, end, kind, a, b, rng.randrange(1 << 30))


def random_scenes(rng: random.Random, duration: float, min_s: float = 3.0, max_s: float = 60.0) -> list[Scene]:
    scenes, t = [], 0.0
    while t < duration:
        length = rng.uniform(min_s, max_s)
        end = duration if duration - (t + length) < min_s else t + length
        scenes.append(random_scene(rng, t, end))
        t = end
    return scenes


def visible_colours(scene: Scene) -> list[str]:
    """Item colours that stand out from the scene's background (both of its colours)."""
    ok = [c for c in COLOUR_NAMES if min(contrast(COLOURS[c], scene.colour_a), contrast(COLOURS[c], scene.colour_b)) > 150]
    return ok or ["white" if sum(scene.colour_a) < 384 else "black"]


def random_item(rng: random.Random, kind: str | None = None, colours: list[str] | None = None) -> Item:
    kind = kind or rng.choice(["shape", "digit", "word"])
    value = {"shape": SHAPES, "digit": DIGITS, "word": WORDS}[kind]
    return Item(kind, rng.choice(value), rng.choice(colours or COLOUR_NAMES))


def random_event(rng: random.Random, item: Item, start: float, end: float, moving: float = 0.3) -> Event:
    size = rng.uniform(0.25, 0.5) if item.kind != "word" else rng.uniform(0.12, 0.25)
    margin = 0.2 if item.kind != "word" else 0.1
    x0, y0 = rng.uniform(margin + 0.1, 1 - margin - 0.1), rng.uniform(margin, 1 - margin)
    x1, y1 = x0, y0
    if rng.random() < moving:
        x1, y1 = rng.uniform(margin + 0.1, 1 - margin - 0.1), rng.uniform(margin, 1 - margin)
    return Event(item, start, end, x0, y0, x1, y1, size, rng.randrange(1 << 20))


def footprint(event: Event) -> tuple[float, float]:
    """Half width and half height of an item, as fractions of a square frame (words are wide)."""
    if event.item.kind == "word":
        return min(0.46, 0.33 * event.size * len(event.item.value)), event.size * 0.6
    return event.size * 0.55, event.size * 0.55


def overlaps(a: Event, b: Event) -> bool:
    (aw, ah), (bw, bh) = footprint(a), footprint(b)
    return abs(a.x0 - b.x0) < aw + bw and abs(a.y0 - b.y0) < ah + bh


def place(rng: random.Random, items: list[Item], start: float, end: float, moving: float = 0.3) -> list[Event]:
    """Events for items shown together, at positions that do not overlap (a few tries, then smaller sizes)."""
    events: list[Event] = []
    for item in items:
        for attempt in range(60):
            event = random_event(rng, item, start, end, moving if len(items) == 1 else 0.0)
            if attempt > 30:
                event.size *= 0.7
            if not any(overlaps(event, other) for other in events):
                break
        events.append(event)
    return events
