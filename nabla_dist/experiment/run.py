"""One experiment: problems × repeats through one method, results streamed to the output dir.

Where a result is written: `_record` builds the line, `ResultsFile.append` writes it the
moment a problem finishes. Restarting with the same output directory skips every finished
(problem, repeat, method) and refuses a config that would compute something else
(results.py: `RESULT_NEUTRAL`). A failed problem is recorded with its reason, counts as
wrong, and is not retried on resume.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from nabla_dist.algorithm.program import Candidate, ProgramOutput
from nabla_dist.experiment.build import build_runtime, make_program, preflight, with_model_defaults
from nabla_dist.experiment.config import ConfigError, ExperimentConfig, to_yaml, upgrade_keys
from nabla_dist.experiment.data import Problem, grade_kind, load_problems
from nabla_dist.experiment.grading import check_gold, extract_answer, is_correct
from nabla_dist.experiment.progress import RunProgress
from nabla_dist.experiment.rescore import RESCORABLE, decide
from nabla_dist.experiment.results import (
    RESULT_NEUTRAL,
    ResultsFile,
    open_output_dir,
    result_key,
    resume_conflicts,
    write_json_atomic,
    write_text_atomic,
)
from nabla_dist.experiment.summary import summarize_results
from nabla_dist.experiment.tracking import Tracker
from nabla_dist.runtime.interface import Runtime

log = logging.getLogger(__name__)


def problem_seed(seed: int, problem_id: str, repeat: int) -> int:
    """Each problem × repeat has its own seed, independent of order, limit and shuffling."""
    return zlib.crc32(f"{seed}:{problem_id}:{repeat}".encode()) % (2**31 - 2**20)


def check_resume(out: Path, cfg: ExperimentConfig) -> None:
    """Refuse to continue `out` with a config that changes results, naming the keys.

    A directory without results (say, a first session that failed to load a model) may be
    reused with any config; one with results but no config.yaml is refused: nothing says
    how those results were made.
    """
    saved, results = out / "config.yaml", out / "results.jsonl"
    if not results.exists() or results.stat().st_size == 0:
        return
    if not saved.exists():
        raise ConfigError(
            f"output_dir {out} holds results but no config.yaml, so nothing says which settings made them — "
            f"restore its config.yaml (a copy of the first run's settings), or use another output_dir"
        )
    try:
        saved_yaml = OmegaConf.to_yaml(upgrade_keys(OmegaConf.create(saved.read_text()), str(saved), strict=False))
        conflicts = resume_conflicts(saved_yaml, to_yaml(cfg), ExperimentConfig)
    except (ValueError, yaml.YAMLError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(f"cannot resume {out}: {first_line} — restore its config.yaml, or use another output_dir") \
            from error
    if conflicts:
        raise ConfigError(
            f"output_dir {out} holds results of a different configuration (saved → now: {'; '.join(conflicts)}) — "
            f"use another output_dir, or rerun with the saved values; only {', '.join(RESULT_NEUTRAL)} may change "
            "when resuming"
        )


def _check_golds(problems, kind: str) -> None:
    """Every gold answer can be judged the way `data.grade` says, before any model work."""
    for problem in problems:
        if problem.answer is not None:
            try:
                check_gold(problem.answer, kind)
            except ValueError as error:
                raise ConfigError(f"problem {problem.id}: {error}") from error


class Experiment:
    """Runs `cfg` against a runtime (local engines or Ray replicas: same programs).

    What can be checked without models is checked before output_dir is touched: the config
    (load_config), the problems, then tokenizers and config files (build.preflight). Then
    the directory is locked, the resume rule checked, config.yaml written, and only then
    models load.
    """

    def __init__(self, cfg: ExperimentConfig, runtime: Runtime | None = None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.problems = {p.id: p for p in load_problems(cfg.data)}
        _check_golds(self.problems.values(), grade_kind(cfg.data))
        self.wanted = {(pid, r, cfg.method.name) for pid in self.problems for r in range(cfg.data.repeats)}
        self.done_at_start: int | None = None  # results of this config in output_dir when the session began
        if runtime is None:
            preflight(cfg)
        self.lock = open_output_dir(self.out)
        try:
            check_resume(self.out, cfg)
            self.results = ResultsFile(self.out / "results.jsonl")
            self.results.repair()
            write_text_atomic(self.out / "config.yaml", to_yaml(cfg))
            self.runtime = runtime or build_runtime(cfg, checked=True)
        except BaseException:
            self.lock.release()
            raise
        self.tokenizer = self.runtime.prompts.tokenizer

    def kept(self) -> tuple[int, int, int]:
        """(results this session added, results of this config in output_dir, results wanted),
        read from results.jsonl: right wherever an interrupt landed."""
        done = len(self.results.done() & self.wanted)
        return done - (done if self.done_at_start is None else self.done_at_start), done, len(self.wanted)

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict:
        cfg = self.cfg
        problems = self.problems
        wanted = self.wanted
        previous = [r for r in self.results.read() if result_key(r) in wanted]
        done = {result_key(r) for r in previous}
        self.done_at_start = len(done)
        todo = [(p, r) for p in problems.values() for r in range(cfg.data.repeats)
                if (p.id, r, cfg.method.name) not in done]
        head = self.runtime.head_matrix() if cfg.method.parametrization == "latents" else None
        method = with_model_defaults(cfg.method, self.runtime.prompts)
        self.session = time.time()
        started: dict = {}
        tracker = Tracker(cfg, self.out, previous)
        progress = RunProgress(f"{cfg.method.name} {cfg.output_dir}", len(wanted), previous)

        def programs():
            for problem, repeat in todo:
                key = (problem.id, repeat)
                try:
                    prompt = self.runtime.prompts.encode(problem.question)
                except ValueError as error:  # bad problem: recorded, the run goes on
                    self._finish(problems, key, None, error, time.monotonic(), tracker, progress)
                    continue
                started[key] = time.monotonic()
                yield key, make_program(method, prompt, problem_seed(cfg.seed, problem.id, repeat), head)

        def on_finish(key, output, error):
            self._finish(problems, key, output, error, started.pop(key), tracker, progress)

        try:
            self.runtime.run(programs(), on_finish, max_in_flight=cfg.runtime.max_in_flight)
        except BaseException:
            tracker.close(failed=True)
            raise
        finally:
            progress.close()
        records = [r for r in self.results.read() if result_key(r) in wanted]
        summary = summarize_results(records, cfg.data.repeats)
        write_json_atomic(self.out / "summary.json", summary)
        tracker.finish(summary, records, self.results.path)
        return summary

    def _finish(self, problems, key, output: ProgramOutput | None, error, start, tracker, progress):
        problem: Problem = problems[key[0]]
        record = self._record(problem, key[1], output, error, time.monotonic() - start)
        self.results.append(record)
        tracker.log_result(record)
        progress.update(record)
        if error is not None:
            log.warning("problem %s repeat %s failed: %s", *key, error)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in self.cfg.method.stop:
            text = text.split(stop)[0]
        return text

    def candidates(self, output: ProgramOutput) -> list[dict]:
        """SC / BoN samples with what each cost, in sample order (rescore.py decides from these)."""
        return [self._candidate(c) for c in output.candidates]

    def _candidate(self, candidate: Candidate) -> dict:
        text = self.decode(candidate.tokens)
        line = {"response": text, "answer": extract_answer(text), "tokens": len(candidate.tokens),
                "forward_tokens": candidate.forward_tokens, "stopped": candidate.stopped}
        if candidate.reward is not None:
            line.update(reward=candidate.reward, reward_tokens=candidate.reward_tokens)
        return line

    def _record(self, problem: Problem, repeat: int, output: ProgramOutput | None, error, wall_s: float) -> dict:
        method = self.cfg.method.name
        record = {
            "problem_id": problem.id,
            "repeat": repeat,
            "method": method,
            "seed": problem_seed(self.cfg.seed, problem.id, repeat),
            "gold": problem.answer,
            "grade": grade_kind(self.cfg.data),  # how `correct` was judged (grading.py)
            "response": None,
            "pred": None,
            "correct": None,
            "model_calls": None,
            "model_calls_honest": None,
            "response_tokens": 0,
            "stopped": None,
            "counts": {},
            "wall_s": round(wall_s, 4),
            "session": self.session,
            "finished_at": time.time(),
            "error": None if error is None else f"{type(error).__name__}: {error}",
        }
        if output is None:
            return record
        if method in RESCORABLE:
            candidates = self.candidates(output)
            record.update(decide(method, candidates, problem.answer, record["grade"]), candidates=candidates)
            if record["counts"] != output.count.totals():  # the replay must match the program's own count
                raise RuntimeError(f"{method} counts replayed from candidates differ from the program's: "
                                     f"{record['counts']} vs {output.count.totals()}")
            return record
        response = self.decode(output.response_ids)
        pred = extract_answer(response)
        record.update(
            response=response,
            pred=pred,
            correct=None if problem.answer is None else is_correct(pred, problem.answer, record["grade"]),
            model_calls=output.count.model_calls,
            model_calls_honest=output.count.model_calls_honest,
            response_tokens=len(output.response_ids),
            stopped=output.stopped,
            counts=output.count.totals(),
        )
        return record
