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

from tqdm.auto import tqdm

from nabla_dist.algorithm.baselines import best_of_n, greedy, self_consistency
from nabla_dist.algorithm.nabla import NablaReasoner, ProgramOutput, Prompt
from nabla_dist.engines.loading import build_reward_engine, load_causal_lm, load_tokenizer
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.experiment.config import ConfigError, ExperimentConfig, to_yaml
from nabla_dist.experiment.data import Problem, load_problems
from nabla_dist.experiment.grading import extract_answer, is_equivalent
from nabla_dist.experiment.rescore import RESCORABLE, decide
from nabla_dist.experiment.results import (
    RESULT_NEUTRAL,
    OutputLock,
    ResultsFile,
    result_key,
    resume_conflicts,
    write_json_atomic,
    write_text_atomic,
)
from nabla_dist.experiment.summary import summarize_results
from nabla_dist.experiment.tracking import Tracker
from nabla_dist.runtime.local import LocalRuntime

log = logging.getLogger(__name__)


def problem_seed(seed: int, problem_id: str, repeat: int) -> int:
    """Each problem × repeat has its own seed, independent of order, limit and shuffling."""
    return zlib.crc32(f"{seed}:{problem_id}:{repeat}".encode()) % (2**31 - 2**20)


def needs_reward(cfg: ExperimentConfig) -> bool:
    m = cfg.method
    return m.name == "best_of_n" or (m.name == "nabla" and (m.lambda_reward != 0 or m.rejection_sampling))


def build_local_runtime(cfg: ExperimentConfig) -> LocalRuntime:
    tokenizer = load_tokenizer(cfg.policy.tokenizer or cfg.policy.path)
    policy = PolicyEngine(load_causal_lm(cfg.policy.path, cfg.policy.dtype), tokenizer,
                          cfg.policy.engine_options(cfg.runtime.device), stop_strings=cfg.method.stop)
    reward = None
    if needs_reward(cfg):
        if cfg.reward is None:
            raise ValueError(f"method.name={cfg.method.name} needs a reward model: set reward.path")
        r = cfg.reward
        reward = build_reward_engine(
            r.path, tokenizer, r.engine_options(cfg.runtime.device), kind=r.kind, tokenizer=r.tokenizer, dtype=r.dtype, verdict=r.verdict,
            policy_vocab_size=policy.embeddings.shape[0],
        )
    return LocalRuntime(policy, reward, cfg.runtime.max_batch_size, cfg.runtime.batch_patience)


def build_runtime(cfg: ExperimentConfig):
    """`runtime.kind`: local engines in this process, or Ray replicas (same interface)."""
    if cfg.runtime.kind == "ray":
        from nabla_dist.runtime.ray_runtime import RayRuntime

        return RayRuntime.from_config(cfg)
    return build_local_runtime(cfg)


def make_program(cfg: ExperimentConfig, prompt: Prompt, seed: int, head=None):
    m = cfg.method
    if m.name == "nabla":
        return NablaReasoner(prompt, m.nabla(), seed, head).run()
    if m.name == "greedy":
        return greedy(prompt, m.max_new_tokens, seed)
    if m.name == "self_consistency":
        return self_consistency(prompt, m.sample(), seed)
    return best_of_n(prompt, m.sample(), seed)


def check_resume(out: Path, cfg: ExperimentConfig) -> None:
    """Refuse to continue `out` with a config that changes results, naming the keys.

    A directory without results (say, a first session that failed to load a model) may be
    reused with any config.
    """
    saved, results = out / "config.yaml", out / "results.jsonl"
    if not saved.exists() or not results.exists() or results.stat().st_size == 0:
        return
    try:
        conflicts = resume_conflicts(saved.read_text(), to_yaml(cfg), ExperimentConfig)
    except ValueError as error:
        raise ConfigError(f"cannot resume {out}: {error}") from error
    if conflicts:
        raise ConfigError(
            f"output_dir {out} holds results of a different configuration (saved → now):\n  "
            + "\n  ".join(conflicts)
            + f"\nUse another output_dir, or rerun with the saved values; only {', '.join(RESULT_NEUTRAL)} "
            "may change when resuming."
        )


class Experiment:
    """Runs `cfg` against a runtime (local engines or Ray replicas: same programs)."""

    def __init__(self, cfg: ExperimentConfig, runtime=None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(self.out)
        try:
            check_resume(self.out, cfg)
            write_text_atomic(self.out / "config.yaml", to_yaml(cfg))
            self.results = ResultsFile(self.out / "results.jsonl")
            self.runtime = runtime or build_runtime(cfg)
        except BaseException:
            self.lock.release()
            raise
        self.tokenizer = self.runtime.tokenizer

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict:
        cfg = self.cfg
        problems = {p.id: p for p in load_problems(cfg.data)}
        wanted = {(pid, r, cfg.method.name) for pid in problems for r in range(cfg.data.repeats)}
        previous = [r for r in self.results.read() if result_key(r) in wanted]
        done = {result_key(r) for r in previous}
        todo = [(p, r) for p in problems.values() for r in range(cfg.data.repeats)
                if (p.id, r, cfg.method.name) not in done]
        head = self.runtime.head_matrix() if cfg.method.parametrization == "latents" else None
        self.session = time.time()
        started: dict = {}
        tracker = Tracker(cfg, self.out, previous)
        progress = tqdm(total=len(wanted), initial=len(done), desc=f"{cfg.method.name}", unit="problem",
                        disable=None)

        def programs():
            for problem, repeat in todo:
                key = (problem.id, repeat)
                try:
                    prompt = self.runtime.encode_prompt(problem.question)
                except ValueError as error:  # bad problem: recorded, the run goes on
                    self._finish(problems, key, None, None, error, time.monotonic(), tracker, progress)
                    continue
                started[key] = (time.monotonic(), prompt)
                yield key, make_program(cfg, prompt, problem_seed(cfg.seed, problem.id, repeat), head)

        def on_finish(key, output, error):
            start, prompt = started.pop(key)
            self._finish(problems, key, prompt, output, error, start, tracker, progress)

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

    def _finish(self, problems, key, prompt, output: ProgramOutput | None, error, start, tracker, progress):
        problem: Problem = problems[key[0]]
        record = self._record(problem, key[1], prompt, output, error, time.monotonic() - start)
        self.results.append(record)
        tracker.log_result(record)
        progress.update(1)
        if tracker.graded:
            progress.set_postfix(acc=f"{tracker.correct / tracker.graded:.3f}", calls=tracker.calls)
        if error is not None:
            log.warning("problem %s repeat %s failed: %s", *key, error)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in self.cfg.method.stop:
            text = text.split(stop)[0]
        return text

    def _stopped(self, prompt: Prompt, ids: list[int]) -> bool:
        """Whether a rollout ended on EOS or a stop string (the policy engine's own test)."""
        if ids and ids[-1] in prompt.stop_token_ids:
            return True
        tail = self.tokenizer.decode(ids[-16:]) if ids else ""
        return any(s in tail for s in self.cfg.method.stop)

    def candidates(self, prompt: Prompt, output: ProgramOutput) -> list[dict]:
        """SC / BoN samples with what each cost, in sample order (rescore.py decides from these)."""
        rollouts = [e for e in output.count.events if e["event"] == "rollout"]
        rewards = [e for e in output.count.events if e["event"] == "reward"]
        out = []
        for j, ids in enumerate(output.candidates):
            text = self.decode(ids)
            candidate = {
                "response": text,
                "answer": extract_answer(text),
                "tokens": len(ids),
                "forward_tokens": rollouts[j]["forward_tokens"],
                "stopped": self._stopped(prompt, ids),
            }
            if output.candidate_rewards:
                candidate.update(reward=output.candidate_rewards[j], reward_tokens=rewards[j]["tokens"])
            out.append(candidate)
        return out

    def _record(self, problem: Problem, repeat: int, prompt, output, error, wall_s: float) -> dict:
        method = self.cfg.method.name
        record = {
            "problem_id": problem.id,
            "repeat": repeat,
            "method": method,
            "seed": problem_seed(self.cfg.seed, problem.id, repeat),
            "gold": problem.answer,
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
            candidates = self.candidates(prompt, output)
            record.update(decide(method, candidates, problem.answer), candidates=candidates)
            if record["counts"] != output.count.totals():  # the replay must match the program's own count
                raise RuntimeError(f"{method} counts replayed from candidates differ from the program's: "
                                     f"{record['counts']} vs {output.count.totals()}")
            return record
        response = self.decode(output.response_ids)
        pred = extract_answer(response)
        record.update(
            response=response,
            pred=pred,
            correct=None if problem.answer is None else (pred is not None and is_equivalent(pred, problem.answer)),
            model_calls=output.count.model_calls,
            model_calls_honest=output.count.model_calls_honest,
            response_tokens=len(output.response_ids),
            stopped=output.stopped,
            counts=output.count.totals(),
        )
        return record
