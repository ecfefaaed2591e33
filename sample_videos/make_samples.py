"""Makes the sample videos in this folder (run: make samples). Content a question can be asked about:

- scenes.mp4   40 s, 320x240, 10 fps: the background is red, green, blue, yellow, purple, cyan for ~6.7 s each,
               a white square moves left to right, and a row of blocks at the top codes the frame number.
- counter.mp4  2 min, 160x120, 5 fps, one colour change a minute: for trying --max-frames and --start/--end.
- shapes.mp4   8 s, 320x240, 2 fps, from the demo model's synthetic world (vidmini/demo/): a few coloured shapes,
               a digit or a word on one background; `make demo` asks the demo model about it.
"""

from pathlib import Path

from vidmini.demo.samples import write_demo_sample
from vidmini.testing.videos import make_video

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    make_video(str(HERE / "scenes.mp4"), 40, fps=10, width=320, height=240, scene_s=40 / 6, crf=23, preset="medium")
    make_video(str(HERE / "counter.mp4"), 120, fps=5, width=160, height=120, scene_s=60, crf=23, preset="medium")
    write_demo_sample(str(HERE / "shapes.mp4"))
    for path in sorted(HERE.glob("*.mp4")):
        print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")
