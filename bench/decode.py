"""Decode throughput at 1 fps, per backend, against the decoder's own full-speed rate on the same file.

    python bench/decode.py [--seconds 300] [--width 1280 --height 720] [--out bench/results/decode.json]

Makes long H.264 files with texture (so decoding costs what real footage costs) and two GOP lengths (2 s, the
usual camera/streaming setting, and 0.4 s, where seeking past frames pays off). Each measurement runs in a fresh
process, so its peak RSS is its own. Prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

MEASURE = r"""
import json, resource, sys, time
import av
from vidmini.video import FrameStream, StreamOptions, make_plan, probe
from vidmini.video.frames import DecodeReport
from vidmini.video.pyav_decoder import PyAVDecoder
path, how = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if how == "ffmpeg-full-speed":  # every frame, no conversion: the decoder's own rate
    with av.open(path) as c:
        s = c.streams.video[0]; s.codec_context.thread_type = "AUTO"
        frames = sum(1 for _ in c.decode(s))
else:
    info = probe(path); plan = make_plan(info)
    if how in ("pyav-sequential", "pyav-seek-skipping"):
        dec = PyAVDecoder(allow_seek=how == "pyav-seek-skipping")
        frames = sum(1 for _ in dec.frames(info, plan, DecodeReport()))
    else:
        workers = 1
        if how.startswith("pyav-parallel"):
            workers = int(how.split("-")[-1]); backend = "auto"
        else:
            backend = how
        stream = FrameStream(info, plan, StreamOptions(decoder=backend, workers=workers, min_parallel_frames=1))
        frames = sum(len(b.positions) for b in stream)
        how = f"{how} ({stream.report.decoder})"
seconds = time.perf_counter() - start
print(json.dumps({"how": how, "frames": frames, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_textured(path: str, seconds: int, width: int, height: int, gop: int, fps: int = 30) -> None:
    """H.264 with moving texture and scene changes; crf 23, preset veryfast."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (height * 2, width * 2, 3), dtype=np.uint8)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "23", "preset": "veryfast", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(seconds * fps):
            x, y = (i * 3) % width, (i * 2) % height
            img = texture[y : y + height, x : x + width].copy()
            img[:, :, (i // (fps * 10)) % 3] //= 2  # a scene change every 10 s
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def measure(path: str, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, path, how], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"how": how, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = parser.parse_args()
    from vidmini.video.decord_decoder import available as decord_available

    ways = ["ffmpeg-full-speed", "pyav-sequential", "pyav-seek-skipping", "pyav"]
    ways += [f"pyav-parallel-{n}" for n in (2, 4) if n <= max(2, os.cpu_count() or 1)]
    ways += ["decord"] if decord_available() else []
    ways += ["auto"]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "seconds_of_video": args.seconds, "size": f"{args.width}x{args.height}", "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for gop in (60, 12):
            path = os.path.join(tmp, f"gop{gop}.mp4")
            started = time.perf_counter()
            make_textured(path, args.seconds, args.width, args.height, gop)
            print(f"made {args.width}x{args.height} {args.seconds} s GOP {gop} ({os.path.getsize(path) / 1e6:.0f} MB)"
                  f" in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            rows = [measure(path, how) for how in ways]
            full = next(r for r in rows if r["how"] == "ffmpeg-full-speed")
            for r in rows:
                if "error" not in r:
                    r["sampled_frames_per_s"] = r["frames"] / r["seconds"]
                    r["video_seconds_per_s"] = args.seconds / r["seconds"]
                    r["speed_vs_full_decode"] = full["seconds"] / r["seconds"]
            results["files"][f"gop{gop}"] = rows
    print(f"{'file':7s} {'how':34s} {'frames':>7s} {'s':>7s} {'frames/s':>9s} {'video s/s':>9s} {'vs full':>8s} {'RSS MB':>7s}")
    for name, rows in results["files"].items():
        for r in rows:
            if "error" in r:
                print(f"{name:7s} {r['how']:34s} error: {r['error']}")
                continue
            print(f"{name:7s} {r['how']:34s} {r['frames']:7d} {r['seconds']:7.2f} {r['sampled_frames_per_s']:9.1f} "
                  f"{r['video_seconds_per_s']:9.1f} {r['speed_vs_full_decode']:7.2f}x {r['peak_rss_mb']:7.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
