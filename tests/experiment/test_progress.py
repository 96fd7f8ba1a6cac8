"""Progress for people: plain lines where no terminal redraws a bar (SLURM, Ray job logs)."""

from __future__ import annotations

import io
import re

from nabla_dist.experiment.progress import RunProgress


def test_plain_lines_report_done_accuracy_calls_and_eta_including_resumed_results():
    stream = io.StringIO()  # not a terminal
    previous = [{"correct": True}, {"correct": False}]
    progress = RunProgress("nabla runs/x", total=10, previous=previous, every_s=0.0, stream=stream)
    for correct, calls in ((True, 100), (True, 50), (None, 30)):  # None: a problem without a gold answer
        progress.update({"correct": correct, "model_calls": calls})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # one per update (every_s=0) and one at the end
    assert lines[1].startswith("nabla runs/x: 4/10 problems, accuracy 0.750, 75 calls/problem, ")
    assert re.search(r"5/10 problems, accuracy 0\.750, 60 calls/problem, \d+\.\d\d s/problem, ETA \dm\d\ds$", lines[2])


def test_plain_lines_are_spaced_by_the_interval():
    stream = io.StringIO()
    progress = RunProgress("greedy", total=100, every_s=3600.0, stream=stream)
    for _ in range(50):
        progress.update({"correct": True, "model_calls": 1})
    assert stream.getvalue() == ""  # nothing before the interval has passed
    progress.close()
    assert stream.getvalue().startswith("greedy: 50/100 problems, accuracy 1.000")
