"""The run's output directory: append-only results.jsonl that survives a crash, and resume.

    <output_dir>/config.yaml      the resolved config of the latest session
    <output_dir>/results.jsonl    one line per finished (problem, repeat, method)
    <output_dir>/summary.json     summary.py, rewritten at the end of every session
    <output_dir>/wandb_run_id     tracking.py: the W&B run every session continues
    <output_dir>/wandb/           W&B's own files (offline runs, logs)
    <output_dir>/.lock            held while a session writes (one writer at a time)

Each finished problem × repeat is one JSON line, written whole, flushed and fsynced (and the
directory too when the file is new). A line is complete when it ends in a newline. A last
line without one is a torn write (the process died mid-write, or a run is writing it now):
readers skip it, and only the writer, holding the lock, cuts it (`repair`) before its first
append. A complete line that does not parse is not a torn write: it is an error naming the
line, and the file is kept as it is. Readers (`report`, `rescore`, resume) never write.

The files of the output directory are never opened through a symbolic link (a link named
`.lock` once emptied its target): a link in their place is refused. Whole files (config,
summary) are written to a unique temporary name, fsynced, renamed into place, and the
directory fsynced, so a crash leaves the old file or the new one, never a mix.

Resume: a new session with the same output directory must compute what the first would
have, so its config may differ from the saved one only in keys that cannot change a
result (`RESULT_NEUTRAL`): where files go, how the work is served (`runtime.*`: kind,
device, batch sizes — batching can move floating-point results in the last bits, we
accept that; likewise `*.prefix_cache`, `policy.lazy_probe` and `policy.norm_chunk`, exact
accelerations of the gradient pass; `*.allow_pickle` only permits a weight format), how it is
logged (`wandb.*`), and how many problems and repeats are asked for (`data.limit`,
`data.repeats`: each problem × repeat has its own seed, so growing either only adds work,
and the summary covers what the current config asks for).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)

RESULT_NEUTRAL = ("output_dir", "runtime.*", "wandb.*", "data.limit", "data.repeats", "policy.prefix_cache",
                  "reward.prefix_cache", "policy.lazy_probe", "policy.norm_chunk", "policy.grad_memory",
                  "reward.grad_memory", "policy.allow_pickle", "reward.allow_pickle")
# The files a session writes; none of them may be a symbolic link.
OUTPUT_FILES = (".lock", "config.yaml", "results.jsonl", "summary.json", "wandb_run_id")
KEY_FIELDS = ("problem_id", "repeat", "method")
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(ValueError):
    """The output directory, or a file in it, cannot be used as it is (a user error)."""


class OutputBusy(OutputError):
    """Another live session holds the output directory."""


class ResultsCorrupt(OutputError):
    """A complete line of results.jsonl that is not a result."""


def result_key(record: dict) -> tuple[str, int, str]:
    return (str(record["problem_id"]), int(record["repeat"]), record["method"])


def _link_refused(path: Path) -> OutputError:
    return OutputError(
        f"{path} is a symbolic link (to {os.readlink(path)}) — nabla-dist does not read or write the files of an "
        "output_dir through links; replace the link by the file itself, or use another output_dir"
    )


def _open_nofollow(path: Path, flags: int) -> int:
    """os.open that refuses a symbolic link in the place of `path` (OutputError)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP and path.is_symlink():
            raise _link_refused(path) from None
        raise


def fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _raw(self) -> bytes:
        try:
            fd = _open_nofollow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        with open(fd, "rb") as f:
            return f.read()

    def _parse(self, raw: bytes) -> tuple[list[dict], int]:
        """(records of the complete lines, where the complete lines end)."""
        records, end = [], 0
        for number, line in enumerate(raw.splitlines(keepends=True), start=1):
            if not line.endswith(b"\n"):
                break  # a torn last line: skipped here, cut by the writer (repair)
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or any(k not in record for k in KEY_FIELDS):
                    raise ValueError(f"not a result object with {', '.join(KEY_FIELDS)}")
                result_key(record)
            except (ValueError, TypeError) as error:
                reason = getattr(error, "msg", None) or str(error)
                raise ResultsCorrupt(
                    f"{self.path}, line {number}: a complete line that is not a result ({reason}) — fix or delete "
                    "that line (nabla-dist leaves the file as it is), or use another output_dir"
                ) from None
            records.append(record)
            end += len(line)
        return records, end

    def read(self) -> list[dict]:
        """All complete records, the first of any duplicate key. Never writes: a torn last
        line is skipped (a run is writing it, or the next run's writer cuts it)."""
        raw = self._raw()
        records, end = self._parse(raw)
        if end < len(raw):
            log.info("%s: skipping an unfinished last line (%d bytes)", self.path, len(raw) - end)
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

    def repair(self) -> None:
        """Cut a torn last line, so the next append starts on a clean line. Only the writer
        calls this, holding the output directory's lock."""
        raw = self._raw()
        _, end = self._parse(raw)
        if end == len(raw):
            return
        log.warning("%s: cutting a torn last line (%d bytes) left by an interrupted run", self.path, len(raw) - end)
        fd = _open_nofollow(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, record: dict) -> None:
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        created = not self.path.exists()
        try:
            fd = _open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.path.parent)
        except OSError as error:  # name the file: os.write's errors do not
            raise OSError(error.errno, error.strerror, str(self.path)) from error


def write_json_atomic(path: str | Path, data) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` into `path` whole or not at all: a unique temporary file in the same directory,
    fsynced, renamed over `path`, then the directory fsynced. A link at `path` is refused."""
    path = Path(path)
    if path.is_symlink():
        raise _link_refused(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with open(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes it private; a plain file is what was meant
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as error:  # name the file meant, not the temporary one
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class OutputLock:
    """An exclusive lock on the output directory, so two sessions never append to one
    results.jsonl (the OS drops it when the holder dies, even by SIGKILL). The lock file is
    opened without truncating and without following a link."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self._fd = _open_nofollow(self.path, os.O_RDONLY | os.O_CREAT)  # flock needs no write access
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise OutputBusy(
                f"{out} is being written by another run (it holds {self.path}) — wait for it to end, "
                "or use another output_dir"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def open_output_dir(out: Path) -> OutputLock:
    """Create `out` if needed, lock it, and refuse links in place of its files."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output_dir={str(out)!r} is a file, not a directory — choose another output_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"output_dir={str(out)!r}: a part of that path is a file — choose another output_dir") \
            from None
    except OSError as error:
        raise OutputError(f"output_dir={str(out)!r} cannot be created ({error.strerror}) — make its parent "
                          "writable, or choose another output_dir") from None
    for name in OUTPUT_FILES:
        if (out / name).is_symlink():
            raise _link_refused(out / name)
    try:
        return OutputLock(out)
    except PermissionError as error:
        raise OutputError(f"output_dir={str(out)!r} is not writable ({error.strerror}) — make it writable, or "
                          "choose another output_dir") from None


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
