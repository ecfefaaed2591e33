"""Hours of video: every sampled frame right, memory flat in the length."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import rss_mb
from vidmini.testing.videos import read_index
from vidmini.inputs.video import FrameStream, StreamOptions, make_plan, probe


@pytest.mark.slow
@pytest.mark.parametrize("decoder,workers", [("pyav", 1), ("auto", 2)])
def test_three_hours_decode_end_to_end_in_flat_memory(three_hour_video, decoder, workers):
    info = probe(str(three_hour_video))
    assert info.duration_s == pytest.approx(10800, abs=1)
    plan = make_plan(info)
    assert len(plan) == 10800
    stream = FrameStream(info, plan, StreamOptions(decoder=decoder, batch_size=16, workers=workers))
    seen, wrong, rss_early = 0, 0, None
    for batch in stream:
        assert batch.frames.shape[1:] == (336, 336, 3)
        assert np.array_equal(batch.positions, np.arange(seen, seen + len(batch.positions)))
        np.testing.assert_allclose(batch.times_s, batch.positions + 0.5)
        wrong += sum(read_index(f) != p for f, p in zip(batch.frames[::7], batch.positions[::7]))
        seen += len(batch.positions)
        if seen == 1008:
            rss_early = rss_mb()
    assert seen == 10800 and wrong == 0
    assert rss_mb() - rss_early < 50  # the queue is bounded: 10 minutes in or 3 hours in, the same memory
    assert stream.report.decoder == ("pyav" if workers == 1 else "pyav-parallel")
