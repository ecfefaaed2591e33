"""The demo model and its synthetic video world: coloured shapes, digits and words on screen, over time.

world.py (what exists: colours, shapes, words) -> timeline.py (what is on screen when) -> render.py (pixels)
-> questions.py (questions with checkable answers); config.py / checkpoint.py build and load the demo model.
"""
