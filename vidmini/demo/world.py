"""The vocabulary of the synthetic world: every colour, shape, digit and word a demo video can show."""

from __future__ import annotations

# Named colours and the RGB the renderer starts from (each draw jitters it a little, so no exact value is learnt).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "purple": (140, 40, 180),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle", "star"]
DIGITS = [str(d) for d in range(10)]
# Common English words of 3-8 letters, shown in capitals. The model knows these and only these.
WORDS = [
    "CAT", "DOG", "SUN", "CAR", "BUS", "RED", "BOX", "KEY", "MAP", "CUP",
    "BOOK", "TREE", "FISH", "BIRD", "DOOR", "MOON", "STAR", "SHIP", "LAMP", "RAIN",
    "HOUSE", "WATER", "APPLE", "TRAIN", "CLOCK", "MUSIC", "PLANT", "HORSE", "BREAD", "CHAIR",
    "GARDEN", "SCHOOL", "WINDOW", "FLOWER", "PENCIL", "BRIDGE", "ORANGE", "SUMMER",
    "KITCHEN", "MORNING", "BICYCLE", "PICTURE", "LIBRARY", "COUNTRY",
    "ELEPHANT", "MOUNTAIN", "SANDWICH", "QUESTION",
]
