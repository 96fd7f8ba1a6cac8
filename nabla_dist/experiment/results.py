"""The run's output directory: append-only results.jsonl that survives a crash.

Each finished problem × repeat is one JSON line, written whole, flushed and fsynced. A torn
last line (the process died mid-write) is detected on reading, dropped with a warning
and cut from the file, so the next append starts on a clean line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def result_key(record: dict) -> tuple[str, int, str]:
    return (str(record["problem_id"]), int(record["repeat"]), record["method"])


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """All complete records; repairs a torn last line."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        records, good_end = [], 0
        for line in raw.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
                records.append(json.loads(line))
                good_end += len(line)
            except ValueError:
                if good_end + len(line) < len(raw):
                    raise ValueError(f"{self.path}: corrupt line {len(records) + 1} in the middle of the file")
                log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                            self.path, len(line))
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
        return records

    def done(self) -> set[tuple[str, int, str]]:
        return {result_key(r) for r in self.read()}

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | Path, data) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
