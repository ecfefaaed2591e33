"""Random timelines of the three kinds the demo model is trained and evaluated on.

- still: one scene, one to three items on screen the whole time ("what is shown" questions).
- sequence: items that appear and disappear one after another over scene cuts (first / last / how many / when).
- needle: a long stretch of backgrounds only, with one item shown once (the needle-in-a-haystack test).
"""

from __future__ import annotations

import random

from vidmini.demo.timeline import (MIN_EVENT_S, Timeline, place, random_item, random_scenes, visible_colours)


def still_clip(rng: random.Random, duration: float, n_items: int | None = None,
               kind_pool: tuple[str, ...] = ("shape", "shape", "digit", "word")) -> Timeline:
    """0-3 items on screen together for the whole clip, their kinds drawn without replacement from kind_pool."""
    scenes = random_scenes(rng, duration, min_s=max(3.0, duration), max_s=max(3.0, duration) + 1)
    n_items = n_items or rng.choice([1, 1, 2, 2, 3])
    kinds = rng.sample(list(kind_pool), n_items)
    colours = visible_colours(scenes[0])
    items = []
    for kind in kinds:
        item = random_item(rng, kind, colours)
        while any(i.kind == item.kind and i.value == item.value for i in items):
            item = random_item(rng, kind, colours)
        items.append(item)
    return Timeline(duration, scenes, place(rng, items, 0.0, duration))


def sequence_clip(rng: random.Random, duration: float, kinds: list[str] | None = None) -> Timeline:
    """Items shown one at a time (each for >= 3 s), with gaps and cuts between them; repeats are allowed."""
    scenes = random_scenes(rng, duration, min_s=4.0, max_s=max(8.0, duration / 3))
    kind = rng.choice(kinds or ["shape", "digit", "word"])
    pool = [random_item(rng, kind) for _ in range(rng.randint(2, 3))]
    events, t = [], rng.uniform(0, 3)
    while t + MIN_EVENT_S <= duration:
        length = min(duration - t, rng.uniform(MIN_EVENT_S, 6.0))
        item = rng.choice(pool)
        scene = next(s for s in scenes if s.start <= t < s.end)
        if item.colour not in visible_colours(scene):
            # keep the item's identity but recolour it where the background would hide it; pool stays coherent
            t += 1.0
            continue
        events += place(rng, [item], t, t + length)
        t += length + rng.uniform(1.0, 5.0)
    tl = Timeline(duration, scenes, events)
    return tl if events else still_clip(rng, duration, 1)


def needle_video(rng: random.Random, duration: float, at: float, length: float = 5.0,
                 kind: str | None = None, scene_s: tuple[float, float] = (20.0, 120.0)) -> Timeline:
    """Backgrounds only, except one item visible from `at` for `length` seconds (clamped inside the video)."""
    scenes = random_scenes(rng, duration, *scene_s)
    at = max(0.0, min(at, duration - length))
    shown = [s for s in scenes if s.start < at + length and s.end > at]  # every scene the item is seen over
    colours = [c for c in visible_colours(shown[0]) if all(c in visible_colours(s) for s in shown)]
    item = random_item(rng, kind, colours or None)
    events = place(rng, [item], at, at + length, moving=0.0)
    return Timeline(duration, scenes, events)
