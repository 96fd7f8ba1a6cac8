"""Progress of a run for the person watching it: done/total, accuracy so far, model calls,
s/problem and ETA.

On a terminal it is a live tqdm line. Elsewhere (SLURM output, a Ray job's log, a pipe) a
redrawn line is unreadable, so a plain line is written every `every_s` seconds and when the
run ends. Throughput is this session's wall time over the problems it finished, so with
many problems in flight it is the run's rate, not one problem's latency.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

PLAIN_EVERY_S = 30.0


class RunProgress:
    def __init__(self, name: str, total: int, previous: list[dict] = (), every_s: float = PLAIN_EVERY_S, stream=None):
        """`previous`: the results a resumed run already has (they count in done and accuracy;
        calls and s/problem are this session's)."""
        self.name, self.total, self.done = name, total, len(previous)
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = self.last_line = time.monotonic()
        self.session_done, self.calls = 0, 0.0
        graded = [r for r in previous if r.get("correct") is not None]
        self.graded, self.correct = len(graded), sum(bool(r["correct"]) for r in graded)
        live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, initial=self.done, desc=name, unit="problem", file=self.stream) if live else None

    def update(self, record: dict) -> None:
        """One finished problem × repeat (its results.jsonl line)."""
        self.done += 1
        self.session_done += 1
        self.calls += record.get("model_calls") or 0
        if record.get("correct") is not None:
            self.graded += 1
            self.correct += bool(record["correct"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self._figures(eta=False), refresh=False)
        elif time.monotonic() - self.last_line >= self.every_s:
            self._plain_line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.session_done:
            self._plain_line()

    def _figures(self, eta: bool = True) -> str:
        parts = []
        if self.graded:
            parts.append(f"accuracy {self.correct / self.graded:.3f}")
        if self.session_done:
            parts.append(f"{self.calls / self.session_done:.0f} calls/problem")
            per_problem = (time.monotonic() - self.started) / self.session_done
            parts.append(f"{per_problem:.2f} s/problem")
            if eta:
                parts.append(f"ETA {_duration(per_problem * (self.total - self.done))}")
        return ", ".join(parts)

    def _plain_line(self) -> None:
        self.last_line = time.monotonic()
        figures = self._figures()
        self.stream.write(f"{self.name}: {self.done}/{self.total} problems" + (f", {figures}" if figures else "") + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def announce(line: str, stream=None) -> None:
    """One line for people (a sweep's point starting), on the terminal or in the log."""
    tqdm.write(line, file=stream or sys.stderr)
