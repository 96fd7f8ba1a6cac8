"""W&B for one run: live per-problem metrics, then the summary, a response table, the results.

`wandb.mode`: "offline" (the default: files under <output_dir>/wandb/, push later with
`wandb sync <output_dir>/wandb/offline-run-*`), "online", or "disabled" (nothing is
imported or written). The run id is made once and kept in <output_dir>/wandb_run_id, and
every session of the output directory opens the run with that id and `resume="allow"`,
so a resumed run continues the same W&B run.

Only the resolved experiment config goes to W&B; credentials stay with W&B's own login
(WANDB_API_KEY or ~/.netrc), never in our config, files or logs.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from nabla_dist.experiment.results import write_text_atomic

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
TABLE_COLUMNS = ("problem_id", "repeat", "method", "gold", "pred", "correct", "model_calls",
                 "model_calls_honest", "response_tokens", "stopped", "error", "response")


def run_id(out: Path) -> str:
    """The output directory's W&B run id, made on first use and written durably (fsynced,
    renamed into place), so a crash cannot leave an empty id that would start a new run."""
    path = Path(out) / RUN_ID_FILE
    if path.exists():
        saved = path.read_text().strip()
        if saved:
            return saved
    new = uuid.uuid4().hex[:16]
    write_text_atomic(path, new + "\n")
    return new


def flatten(summary: dict, prefix: str = "") -> dict:
    """{"greedy": {"accuracy": {"avg@1": …}}} → {"greedy/accuracy/avg@1": …}; nulls dropped."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """One session's view of the W&B run; every method is a no-op when disabled."""

    def __init__(self, cfg, out: Path, previous: list[dict] = ()):
        self.out = Path(out)
        self.run = None
        self.started = time.monotonic()
        self.done = len(previous)
        self.correct = sum(bool(r.get("correct")) for r in previous)
        self.graded = sum(r.get("gold") is not None for r in previous)  # a failed result counts as wrong
        self.calls = sum(r.get("model_calls") or 0 for r in previous)
        self.session_done = 0
        self.session_tokens = 0
        if cfg.wandb.mode == "disabled":
            return
        import wandb

        os.environ["WANDB_DIR"] = str(self.out)  # W&B's files live with the run's results
        self.run = wandb.init(
            mode=cfg.wandb.mode,
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            group=cfg.wandb.group,
            tags=list(cfg.wandb.tags) or None,
            name=self.out.name,
            id=run_id(self.out),
            resume="allow",
            dir=str(self.out),
            config=asdict(cfg),
            settings=wandb.Settings(silent=True),
        )
        self.run.define_metric("problems_done")
        self.run.define_metric("*", step_metric="problems_done")
        log.info("W&B run %s (%s) in %s", self.run.id, cfg.wandb.mode, self.out / "wandb")

    @property
    def id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log_result(self, record: dict) -> None:
        """One finished problem × repeat: its numbers, the running accuracy, throughput."""
        self.done += 1
        self.session_done += 1
        self.session_tokens += record.get("response_tokens") or 0
        self.calls += record.get("model_calls") or 0
        if record.get("gold") is not None:
            self.graded += 1
            self.correct += bool(record.get("correct"))
        if self.run is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        row = {
            "problems_done": self.done,
            "problem/correct": None if record.get("correct") is None else float(record["correct"]),
            "problem/model_calls": record.get("model_calls"),
            "problem/model_calls_honest": record.get("model_calls_honest"),
            "problem/response_tokens": record.get("response_tokens"),
            "problem/wall_s": record.get("wall_s"),
            "problem/error": float(bool(record.get("error"))),
            "running/accuracy": self.correct / self.graded if self.graded else None,
            "running/model_calls_mean": self.calls / self.done,
            "throughput/problems_per_s": self.session_done / elapsed,
            "throughput/response_tokens_per_s": self.session_tokens / elapsed,
        }
        self.run.log({k: v for k, v in row.items() if v is not None})

    def finish(self, summary: dict, records: list[dict], results_path: Path) -> None:
        """The summary, a table of every response, results.jsonl as an artifact; closes the run."""
        if self.run is None:
            return
        import wandb

        self.run.summary.update(flatten(summary))
        table = wandb.Table(columns=list(TABLE_COLUMNS))
        for r in records:
            table.add_data(*[r.get(c) if c != "problem_id" else str(r[c]) for c in TABLE_COLUMNS])
        self.run.log({"problems_done": self.done, "responses": table})
        artifact = wandb.Artifact(f"results-{self.run.id}", type="results",
                                  metadata={"results": len(records)})
        artifact.add_file(str(results_path), name="results.jsonl")
        self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None

    def close(self, failed: bool = True) -> None:
        """End the W&B session without a summary (the run stopped early)."""
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
