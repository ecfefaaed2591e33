"""Decoding at 1 fps: PyAV against each decord build, for speed on long files and for frames on the real corpus.

    python bench/decode.py [speed|corpus|all] [--decord LABEL=PYTHON ...] [--seconds 60] [--reps 2]

decord 0.6 and decord2 are both `import decord`, so they cannot share an interpreter: each `--decord` names a
Python that has one of them and this checkout importable (default: this interpreter, if it has decord). PyAV
rows always run in this interpreter.

- speed: two long textured H.264 files (2 s GOP, where every frame must be decoded anyway, and 0.4 s GOP, where
  skipping to keyframes pays), each way in a fresh process (its own peak RSS, the decord child's included), each
  measured `--reps` times round-robin so that load from elsewhere hits every way alike; the best run counts.
  "vs full" is relative to FFmpeg decoding every frame of the same file, measured in the same run.
- corpus: every file of ../shared/videos through vidmini's PyAV and decord backends (the decord one under its
  watchdog, so a stall is a result, not a hang): frames equal to PyAV's (max/mean abs difference), error, stall,
  and the time each backend took.

Prints Markdown tables; saves bench/results/decode.json (one section per part) and bench/results/decode.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CORPUS = Path(os.environ.get("VIDMINI_SHARED", REPO.parent / "shared")) / "videos"
EQUAL_MAX_DIFF = 2  # see tests/test_decord_frames.py: conversion rounding, not another frame

# One decode of one file, in a fresh process. Prints one JSON line.
SPEED = r"""
import glob, json, os, resource, sys, threading, time
from vidmini.inputs.video import FrameStream, StreamOptions, make_plan, probe
peak_kb = [0]
def rss_kb(pid):
    try:
        return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
def watch_rss():
    # ru_maxrss is no use here: Linux carries the parent's high-water mark across fork and exec. Sum the RSS of
    # this process and its children (decord's, spawned from the decode thread) every 20 ms instead.
    while True:
        kids = [int(c) for f in glob.glob(f"/proc/{os.getpid()}/task/*/children") for c in open(f).read().split()]
        peak_kb[0] = max(peak_kb[0], rss_kb(os.getpid()) + sum(rss_kb(c) for c in kids))
        time.sleep(0.02)
def main():
    threading.Thread(target=watch_rss, daemon=True).start()
    path, how = sys.argv[1], sys.argv[2]
    start = time.perf_counter()
    if how == "ffmpeg-full-speed":  # every frame, no conversion: the decoder's own rate
        import av
        with av.open(path) as c:
            s = c.streams.video[0]; s.codec_context.thread_type = "AUTO"
            frames = sum(1 for _ in c.decode(s))
        used = how
    else:
        info = probe(path); plan = make_plan(info)
        workers = int(how.split("-")[-1]) if how.startswith("pyav-parallel") else 1
        backend = "auto" if how.startswith("pyav-parallel") else how
        stream = FrameStream(info, plan, StreamOptions(decoder=backend, workers=workers, min_parallel_frames=1))
        keep = len(sys.argv) > 3  # the frames, for the parent to compare across ways (first run only)
        kept = [b.frames for b in stream if keep]
        frames = len(plan) - stream.report.missing
        used = stream.report.decoder
    seconds = time.perf_counter() - start
    if how != "ffmpeg-full-speed" and keep:
        import numpy as np
        np.save(sys.argv[3], np.concatenate(kept))
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(json.dumps({"frames": frames, "seconds": seconds, "decoder": used, "peak_rss_mb": peak_kb[0] / 1024,
                      "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage)}))
if __name__ == "__main__":  # decord's child process is spawned: it re-imports this module
    main()
"""

# Every corpus file through one backend, in one process; frames saved for the parent to compare.
CORPUS_RUN = r"""
import json, sys, time
import numpy as np
from vidmini.inputs.video import StreamOptions, VideoError, decode_all, make_plan, probe
backend, out_dir, stall_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
def main():
    for path in sys.argv[4:]:
        name = path.rsplit("/", 1)[-1]
        row = {"name": name}
        try:
            info = probe(path); plan = make_plan(info)
            start = time.perf_counter()
            frames, stream = decode_all(info, plan, StreamOptions(decoder=backend, decord_stall_s=stall_s))
            row.update(seconds=time.perf_counter() - start, frames=len(frames), decoder=stream.report.decoder)
            np.save(f"{out_dir}/{name}.npy", frames)
        except VideoError as err:
            message = str(err).split(": ", 1)[-1]
            row.update(error=message, stall="stalled" in message)
        print(json.dumps(row), flush=True)
if __name__ == "__main__":  # decord's child process is spawned: it re-imports this module
    main()
"""


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def run_json(python: str, code: str, args: list[str], timeout: float) -> list[dict]:
    """Run a snippet in `python`; its JSON lines, or one error row (a timeout is a stall of the whole run)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        out = subprocess.run([python, f.name, *args], capture_output=True, text=True, timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired as err:
        lines = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return [json.loads(x) for x in lines.splitlines() if x.startswith("{")] + [{"error": "timeout", "stall": True}]
    finally:
        os.unlink(f.name)
    rows = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0:
        rows.append({"error": (out.stderr.strip().splitlines() or ["failed"])[-1]})
    return rows


def decord_version(python: str) -> str | None:
    out = subprocess.run([python, "-c", "import decord; print(decord.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def decord_pythons(specs: list[str]) -> dict[str, str]:
    """label -> interpreter. Labels name the version each one really imports."""
    found = {}
    for spec in specs or [sys.executable]:
        label, _, python = spec.rpartition("=")
        version = decord_version(python)
        if version is None:
            print(f"{python}: no decord, skipped", file=sys.stderr)
            continue
        found[label or f"decord {version}"] = python
    return found


# ---- speed ------------------------------------------------------------------------------------------------------
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


def speed(args, pythons: dict[str, str]) -> dict:
    ways = [("ffmpeg-full-speed", "", sys.executable), ("pyav", "", sys.executable)]
    ways += [("pyav-parallel-2", "", sys.executable)] if args.parallel else []
    ways += [("decord", label, python) for label, python in pythons.items()]
    # auto as shipped: with the last decord named (the one pyproject.toml depends on)
    ways += [("auto", *list(pythons.items())[-1])] if pythons else [("auto", "", sys.executable)]
    section = {"decord": pythons, "seconds_of_video": args.seconds, "size": f"{args.width}x{args.height}", "reps": args.reps, "files": {}}
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    for gop in (60, 12):
        path = os.path.join(args.workdir, f"{args.width}x{args.height}-{args.seconds}s-gop{gop}.mp4")
        if not os.path.exists(path):  # kept between runs: making it costs more than measuring it
            make_textured(path + ".tmp.mp4", args.seconds, args.width, args.height, gop)
            os.replace(path + ".tmp.mp4", path)
        runs: dict[int, list[dict]] = {i: [] for i in range(len(ways))}
        saved = {i: f"{path}.{i}.npy" for i, (how, _, _) in enumerate(ways) if how != "ffmpeg-full-speed"}
        for rep in range(args.reps):
            for i, (how, _, python) in enumerate(ways):
                keep = [saved[i]] if rep == 0 and i in saved else []  # frames once; timing runs write nothing
                runs[i] += run_json(python, SPEED, [path, how, *keep], timeout=600)
        rows = [best_row(how, label, runs[i]) for i, (how, label, _) in enumerate(ways)]
        compare_to_pyav(rows, ways, saved)
        full = rows[0]["seconds"]
        for r in rows:
            if "seconds" in r:
                r["video_seconds_per_s"] = args.seconds / r["seconds"]
                r["speed_vs_full_decode"] = full / r["seconds"]
        section["files"][f"gop{gop} ({gop / 30:g} s)"] = rows
    return section


def compare_to_pyav(rows: list[dict], ways: list[tuple], saved: dict[int, str]) -> None:
    """Max abs difference of each way's frames to PyAV's (the same plan): speed counts only with the right frames."""
    reference = next(i for i, (how, _, _) in enumerate(ways) if how == "pyav")
    if not os.path.exists(saved[reference]):
        return
    want = np.load(saved[reference]).astype(np.int16)
    for i, path in saved.items():
        if os.path.exists(path):
            got = np.load(path).astype(np.int16)
            rows[i]["max_diff_to_pyav"] = int(np.abs(got - want).max()) if got.shape == want.shape else None
    for path in saved.values():
        if os.path.exists(path):
            os.unlink(path)


def best_row(how: str, label: str, runs: list[dict]) -> dict:
    good = [r for r in runs if "seconds" in r]
    row = {"how": f"{how} [{label}]" if label else how}
    if not good:
        return {**row, "error": runs[-1].get("error", "failed") if runs else "not run"}
    best = min(good, key=lambda r: r["seconds"])
    return {**row, **best, "all_seconds": [round(r["seconds"], 2) for r in good],
            "min_cpu_s": min(r["cpu_s"] for r in good), "peak_rss_mb": max(r["peak_rss_mb"] for r in good)}


def speed_table(section: dict) -> list[str]:
    lines = [f"{section['seconds_of_video']} s of {section['size']} H.264 at 30 fps, sampled at 1 fps; "
             f"best of {section['reps']} runs (all runs listed)", "",
             "| GOP | way | decoder used | frames vs PyAV (max diff) | sampled frames/s | video s per s | vs full | "
             "CPU s (least) | peak RSS MB (process + children) | runs s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in section["files"].items():
        for r in rows:
            if "error" in r:
                lines.append(f"| {name} | {r['how']} | error: {r['error'][-120:]} | | | | | | | |")
                continue
            rate = "–" if r["how"] == "ffmpeg-full-speed" else f"{r['frames'] / r['seconds']:.1f}"
            same = r.get("max_diff_to_pyav", "–")
            lines.append(f"| {name} | {r['how']} | {r['decoder']} | {same} | {rate} | {r['video_seconds_per_s']:.1f} | "
                         f"{r['speed_vs_full_decode']:.2f}x | {r['min_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                         f"{' / '.join(f'{s:.1f}' for s in r['all_seconds'])} |")
    return lines


# ---- corpus -----------------------------------------------------------------------------------------------------
def corpus(args, pythons: dict[str, str]) -> dict:
    files = sorted(str(p) for p in CORPUS.iterdir() if p.suffix not in (".md", ".py"))
    section = {"videos": str(CORPUS), "decord": pythons, "decord_stall_s": args.stall_s, "equal_max_diff": EQUAL_MAX_DIFF, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"pyav": ("pyav", sys.executable)}
        backends.update({label: ("decord", python) for label, python in pythons.items()})
        for label, (backend, python) in backends.items():
            out = os.path.join(tmp, label.replace(" ", "_"))
            os.makedirs(out)
            budget = 60 + len(files) * (args.stall_s + 10)
            for row in run_json(python, CORPUS_RUN, [backend, out, str(args.stall_s), *files], timeout=budget):
                section["files"].setdefault(row.pop("name", "?"), {})[label] = row
        for name, by_backend in section["files"].items():
            compare_frames(tmp, name, by_backend)
    return section


def compare_frames(tmp: str, name: str, by_backend: dict) -> None:
    """Each decord result gets max/mean abs difference to PyAV's frames for the same plan."""
    if "frames" not in by_backend.get("pyav", {}):
        return
    reference = np.load(os.path.join(tmp, "pyav", f"{name}.npy")).astype(np.int16)
    for label, row in by_backend.items():
        if label == "pyav" or "frames" not in row:
            continue
        frames = np.load(os.path.join(tmp, label.replace(" ", "_"), f"{name}.npy")).astype(np.int16)
        if frames.shape != reference.shape:
            row.update(equal=False, shape=list(frames.shape))
            continue
        diff = np.abs(frames - reference)
        row.update(max_diff=int(diff.max()), mean_diff=round(float(diff.mean()), 3),
                   equal=bool(diff.max() <= EQUAL_MAX_DIFF))


def corpus_cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    if "error" in row:
        return f"**stall** ({row['error']})" if row.get("stall") else f"error: {row['error'][:90]}"
    timing = f"{row['seconds']:.2f} s"
    if "equal" not in row:
        return f"reads, {row['frames']} frames, {timing}"
    verdict = "equal" if row["equal"] else "**differs**"
    return f"{verdict} (max {row.get('max_diff', '?')}, mean {row.get('mean_diff', '?')}), {timing}"


def corpus_table(section: dict) -> list[str]:
    labels = sorted({label for rows in section["files"].values() for label in rows} - {"pyav"}) + ["pyav"]
    lines = [f"Frames of vidmini's decord backend vs its PyAV backend, 1 fps plan; equal = max abs diff <= "
             f"{section['equal_max_diff']}; decord watchdog {section['decord_stall_s']:g} s without a frame", "",
             "| file | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, rows in sorted(section["files"].items()):
        lines.append(f"| {name} | " + " | ".join(corpus_cell(rows.get(label)) for label in labels) + " |")
    return lines


# ---- main -------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="all", choices=["speed", "corpus", "all"])
    parser.add_argument("--decord", action="append", default=[], metavar="[LABEL=]PYTHON",
                        help="an interpreter with a decord build (repeat; default: this one)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--parallel", action="store_true", help="also PyAV with 2 segment threads (opt-in in vidmini)")
    parser.add_argument("--stall-s", type=float, default=10.0, help="decord watchdog for the corpus")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vidmini-bench-decode"))
    args = parser.parse_args()
    pythons = decord_pythons(args.decord)
    json_path, md_path = RESULTS / "decode.json", RESULTS / "decode.md"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    tables = {}
    if args.part in ("corpus", "all"):
        results["corpus"] = corpus(args, pythons)
    if args.part in ("speed", "all"):
        results["speed"] = speed(args, pythons)
    if "corpus" in results:
        tables["Corpus"] = corpus_table(results["corpus"])
    if "speed" in results:
        tables["Speed"] = speed_table(results["speed"])
    text = "\n".join(f"## {title}\n\n" + "\n".join(lines) + "\n" for title, lines in tables.items())
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    md_path.write_text(f"# bench/decode.py on {results['machine']}\n\n{text}")
    print(f"saved {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
