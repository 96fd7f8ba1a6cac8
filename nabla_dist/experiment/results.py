"""The run's output directory: append-only results.jsonl that survives a crash, and resume.

    <output_dir>/config.yaml      the resolved config of the latest session
    <output_dir>/results.jsonl    one line per finished (problem, repeat, method)
    <output_dir>/summary.json     summary.py, rewritten at the end of every session
    <output_dir>/wandb_run_id     tracking.py: the W&B run every session continues
    <output_dir>/wandb/           W&B's own files (offline runs, logs)
    <output_dir>/.lock            held while a session writes (one writer at a time)

Each finished problem × repeat is one JSON line, written whole, flushed and fsynced. A torn
last line (the process died mid-write) is detected on reading, dropped with a warning
and cut from the file, so the next append starts on a clean line.

Resume: a new session with the same output directory must compute what the first would
have, so its config may differ from the saved one only in keys that cannot change a
result (`RESULT_NEUTRAL`): where files go, how the work is served (`runtime.*`: kind,
device, batch sizes — batching can move floating-point results in the last bits, we
accept that; likewise `*.prefix_cache`, `policy.lazy_probe` and `policy.norm_chunk`, exact accelerations
of the gradient pass), how it is logged (`wandb.*`), and how many problems and repeats are asked
for (`data.limit`, `data.repeats`: each problem × repeat has its own seed, so growing
either only adds work, and the summary covers what the current config asks for).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)

RESULT_NEUTRAL = ("output_dir", "runtime.*", "wandb.*", "data.limit", "data.repeats", "policy.prefix_cache",
                  "reward.prefix_cache", "policy.lazy_probe", "policy.norm_chunk", "policy.grad_memory",
                  "reward.grad_memory")


def result_key(record: dict) -> tuple[str, int, str]:
    return (str(record["problem_id"]), int(record["repeat"]), record["method"])


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """All complete records, the first of any duplicate key; repairs a torn last line."""
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
                    raise ValueError(
                        f"{self.path}: line {len(records) + 1} is corrupt and is not the last line, so it is "
                        "not a torn write; inspect the file and remove or fix that line"
                    ) from None
                log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                            self.path, len(line))
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
        unique: dict[tuple, dict] = {}
        for record in records:
            key = result_key(record)
            if key in unique:
                log.warning("%s: duplicate result for %s ignored (the first is kept)", self.path, key)
            else:
                unique[key] = record
        return list(unique.values())

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
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class OutputBusy(RuntimeError):
    """Another live session holds the output directory."""


class OutputLock:
    """An exclusive lock on the output directory, so two sessions never append to one
    results.jsonl (the OS drops it when the holder dies, even by SIGKILL)."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self._file = open(self.path, "w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutputBusy(
                f"{out} is being written by another run (it holds {self.path}); wait for it to end "
                "or use another output_dir"
            ) from None

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _neutral(key: str) -> bool:
    return any(key == n or (n.endswith(".*") and key.startswith(n[:-1])) for n in RESULT_NEUTRAL)


def resume_conflicts(saved_yaml: str, current_yaml: str, schema) -> list[str]:
    """The result-changing keys whose values differ, as "key: saved → now" lines.

    Both configs are laid over `schema`'s defaults first, so a field added to the code
    after the run started counts as unchanged when it still has its default.
    """
    try:
        saved = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(saved_yaml))
    except OmegaConfBaseException as error:
        first_line = str(error).splitlines()[0]
        raise ValueError(f"the saved config.yaml does not fit this version of the code ({first_line})") from error
    current = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(current_yaml))
    old = _flatten(OmegaConf.to_container(saved))
    new = _flatten(OmegaConf.to_container(current))
    return [
        f"{key}: {old.get(key, '<absent>')!r} → {new.get(key, '<absent>')!r}"
        for key in sorted(set(old) | set(new))
        if not _neutral(key) and old.get(key, "<absent>") != new.get(key, "<absent>")
    ]
