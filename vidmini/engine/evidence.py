"""`--evidence`: the moments of the video an answer drew on, from its attention to each frame (vidmini.engine.relevance).

A frame's score is the attention the answer's positions paid to it; a moment is a peak frame with the neighbours
that hold at least half its score, so a run of frames that all matter reads as one range (12:03–12:08). Its score
is its share of all the attention the answer paid to the video. Times are the frames' presentation times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MOMENTS = 3
MERGE_SHARE = 0.5  # a neighbouring frame joins a moment when it scores at least this share of the moment's peak
PLOT_SOFTWARE = "vidmini evidence plot"  # the PNG's Software text chunk: how a rerun knows the plot is ours


@dataclass(frozen=True)
class Moment:
    start_s: float  # the first frame's presentation time
    end_s: float  # the last frame's (equal to start_s for a single frame)
    score: float  # share of the answer's attention to the video that fell on these frames

    def to_dict(self) -> dict:
        return {"start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3), "score": round(self.score, 4)}


def moments(scores: np.ndarray, times: np.ndarray, count: int = DEFAULT_MOMENTS) -> list[Moment]:
    """The moments around the `count` highest peaks, the largest score first. scores [F] >= 0, times [F] ascending."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    total = scores.sum()
    free = np.ones(len(scores), dtype=bool)
    out: list[Moment] = []
    while len(out) < count and free.any() and total > 0:
        peak = int(np.argmax(np.where(free, scores, -np.inf)))
        lo = hi = peak
        while lo > 0 and free[lo - 1] and scores[lo - 1] >= MERGE_SHARE * scores[peak]:
            lo -= 1
        while hi + 1 < len(scores) and free[hi + 1] and scores[hi + 1] >= MERGE_SHARE * scores[peak]:
            hi += 1
        free[max(0, lo - 1) : hi + 2] = False  # a frame right beside a moment is part of it or below it, not another
        out.append(Moment(float(times[lo]), float(times[hi]), float(scores[lo : hi + 1].sum() / total)))
    return sorted(out, key=lambda m: -m.score)  # a run of frames can outweigh a higher single peak


def clock(seconds: float, hours: bool) -> str:
    """h:mm:ss, or m:ss when the video is under an hour; the second the time falls in, as a player shows it."""
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if hours else f"{s // 60}:{s % 60:02d}"


def describe(found: list[dict], duration_s: float | None) -> str:
    """'evidence: 12:03–12:08 (41%), 31:10 (12%)' from moments as their JSON dicts."""
    hours = (duration_s or 0) >= 3600 or any(m["end_s"] >= 3600 for m in found)
    parts = []
    for m in found:
        start, end = clock(m["start_s"], hours), clock(m["end_s"], hours)
        parts.append(f"{start if start == end else f'{start}–{end}'} ({m['score']:.0%})")
    return "evidence: " + (", ".join(parts) if parts else "none")


def write_plot(rows: list[tuple[str, np.ndarray, np.ndarray, list[dict]]], path: str) -> None:
    """Relevance over video time, one row per question (question, times [F], scores [F], moments), the moments
    shaded. Needs matplotlib (the `plot` extra)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.2 + 1.6 * len(rows)), sharex=True, squeeze=False)
    end = max((float(t[-1]) for _, t, _, _ in rows if len(t)), default=0.0)
    hours = end >= 3600
    for ax, (question, times, scores, found) in zip(axes[:, 0], rows):
        share = np.asarray(scores, dtype=np.float64) / max(float(np.sum(scores)), 1e-30)
        ax.plot(times, share, color="tab:blue", linewidth=0.8)
        for rank, m in enumerate(found, start=1):
            half = 0.5 * (times[1] - times[0]) if len(times) > 1 else 0.5
            ax.axvspan(m["start_s"] - half, m["end_s"] + half, color="tab:red", alpha=0.25)
            ax.annotate(f"{rank}", (m["start_s"], share.max()), fontsize=8, color="tab:red", va="top")
        ax.set_title(question if len(question) <= 100 else question[:99] + "…", fontsize=9, loc="left")
        ax.set_ylabel("share", fontsize=8)
    bottom = axes[-1, 0]
    bottom.set_xlim(0, max(end, 1.0))
    ticks = [t for t in bottom.get_xticks() if 0 <= t <= max(end, 1.0)]
    bottom.set_xticks(ticks, [clock(t, hours) for t in ticks])
    bottom.set_xlabel("video time")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": PLOT_SOFTWARE})
    plt.close(fig)


class Evidence:
    """Each answer's moments, as its Relevance (vidmini.engine.engine) arrives: printed after the answer when it streams
    (vidmini.jobs.ask.TextStreamer), kept for --json, the summarize record and the plot."""

    def __init__(self, engine, count: int, duration_s: float | None, stream=None):
        self.engine, self.count, self.duration_s, self.stream = engine, count, duration_s, stream
        self.found: dict[int, tuple] = {}  # query index -> (times [F], scores [F], moments as dicts)

    def add(self, i: int, relevance) -> None:
        times, scores = relevance.times.numpy(), relevance.scores().numpy()
        found = [m.to_dict() for m in moments(scores, times, self.count)]
        self.found[i] = (times, scores, found)
        if self.stream:
            self.stream.close(i, self.engine.decode_text(self.stream.tokens.get(i, [])),
                              describe(found, self.duration_s))

    def fields(self, i: int) -> dict:
        """{"evidence": [...]} for answer i's JSON, or nothing without --evidence."""
        return {"evidence": self.found[i][2]} if i in self.found else {}

    def plot(self, questions: list[str], path: str) -> None:
        write_plot([(q, *self.found[i]) for i, q in enumerate(questions) if i in self.found], path)
