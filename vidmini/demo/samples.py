"""The sample clip `make demo` asks the demo model about (sample_videos/shapes.mp4), and its questions."""

from __future__ import annotations

from vidmini.demo.timeline import Event, Item, Scene, Timeline
from vidmini.demo.video import write_video

# Written out, not drawn from a seed, so the sample and its answers never change with the generator.
SAMPLE = Timeline(
    duration=8.0,
    scenes=[Scene(0.0, 8.0, "gradient", (40, 60, 90), (70, 90, 120), seed=7)],
    events=[
        Event(Item("shape", "star", "yellow"), 0.0, 8.0, 0.28, 0.35, 0.28, 0.35, 0.38, font=11),
        Event(Item("shape", "circle", "red"), 0.0, 8.0, 0.72, 0.35, 0.72, 0.35, 0.30, font=5),
        Event(Item("word", "HOUSE", "white"), 0.0, 8.0, 0.5, 0.8, 0.5, 0.8, 0.16, font=3),
    ],
)
QUESTIONS = {"What colour is the star?": "yellow", "What colour is the circle?": "red", "What word is shown?": "HOUSE"}


def write_demo_sample(path: str) -> str:
    return write_video(SAMPLE, path, fps=2.0, width=320, height=240, crf=28)
