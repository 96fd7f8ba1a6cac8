"""One experiment: problems × repeats through one method, results streamed to the output dir.

Where a result is written: `_record` builds the line, `ResultsFile.append` writes it the
moment a problem finishes. Restarting with the same output directory skips what is done.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from nabla_dist.algorithm.baselines import best_of_n, greedy, self_consistency
from nabla_dist.algorithm.nabla import NablaReasoner, ProgramOutput, Prompt
from nabla_dist.engines.loading import load_causal_lm, load_reward_model, load_tokenizer
from nabla_dist.engines.policy import EngineOptions, PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.experiment.config import ExperimentConfig, to_yaml
from nabla_dist.experiment.data import Problem, load_problems
from nabla_dist.experiment.grading import extract_answer, is_equivalent
from nabla_dist.experiment.metrics import majority_vote
from nabla_dist.experiment.results import ResultsFile, write_json_atomic
from nabla_dist.experiment.summary import summarize_results
from nabla_dist.runtime.local import LocalRuntime

log = logging.getLogger(__name__)


def problem_seed(seed: int, problem_id: str, repeat: int) -> int:
    """Each problem × repeat has its own seed, independent of order, limit and shuffling."""
    return zlib.crc32(f"{seed}:{problem_id}:{repeat}".encode()) % (2**31 - 2**20)


def needs_reward(cfg: ExperimentConfig) -> bool:
    m = cfg.method
    return m.name == "best_of_n" or (m.name == "nabla" and (m.lambda_reward != 0 or m.rejection_sampling))


def build_local_runtime(cfg: ExperimentConfig) -> LocalRuntime:
    options = lambda model_cfg: EngineOptions(cfg.runtime.device, model_cfg.autocast_bf16)  # noqa: E731
    tokenizer = load_tokenizer(cfg.policy.tokenizer or cfg.policy.path)
    policy = PolicyEngine(load_causal_lm(cfg.policy.path, cfg.policy.dtype), tokenizer, options(cfg.policy),
                          stop_strings=cfg.method.stop)
    reward = None
    if needs_reward(cfg):
        if cfg.reward is None:
            raise ValueError(f"method.name={cfg.method.name} needs a reward model: set reward.path")
        reward = RewardEngine(
            load_reward_model(cfg.reward.path, cfg.reward.dtype),
            load_tokenizer(cfg.reward.tokenizer or cfg.reward.path),
            tokenizer,
            options(cfg.reward),
        )
    return LocalRuntime(policy, reward, cfg.runtime.max_batch_size)


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


class Experiment:
    """Runs `cfg` against a runtime (local engines or Ray replicas: same programs)."""

    def __init__(self, cfg: ExperimentConfig, runtime=None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(to_yaml(cfg))
        self.results = ResultsFile(self.out / "results.jsonl")
        self.runtime = runtime or build_runtime(cfg)
        self.tokenizer = self.runtime.tokenizer

    def run(self) -> dict:
        cfg = self.cfg
        problems = {p.id: p for p in load_problems(cfg.data)}
        done = self.results.done()
        todo = [(p, r) for p in problems.values() for r in range(cfg.data.repeats)
                if (p.id, r, cfg.method.name) not in done]
        head = self.runtime.head_matrix() if cfg.method.parametrization == "latents" else None
        started: dict = {}
        progress = tqdm(total=len(todo), desc=f"{cfg.method.name}", unit="problem", disable=None)
        tally = {"correct": 0, "graded": 0, "calls": 0}

        def programs():
            for problem, repeat in todo:
                key = (problem.id, repeat)
                try:
                    prompt = self.runtime.encode_prompt(problem.question)
                except ValueError as error:  # bad problem: recorded, the run goes on
                    self._finish(problems, key, None, error, time.monotonic(), tally, progress)
                    continue
                started[key] = time.monotonic()
                yield key, make_program(cfg, prompt, problem_seed(cfg.seed, problem.id, repeat), head)

        def on_finish(key, output, error):
            self._finish(problems, key, output, error, started.pop(key), tally, progress)

        self.runtime.run(programs(), on_finish, max_in_flight=cfg.runtime.max_in_flight)
        progress.close()
        summary = summarize_results(self.results.read())
        write_json_atomic(self.out / "summary.json", summary)
        return summary

    def _finish(self, problems, key, output: ProgramOutput | None, error, start, tally, progress):
        problem: Problem = problems[key[0]]
        record = self._record(problem, key[1], output, error, time.monotonic() - start)
        self.results.append(record)
        if record["correct"] is not None:
            tally["graded"] += 1
            tally["correct"] += record["correct"]
        tally["calls"] += record["model_calls"] or 0
        progress.update(1)
        if tally["graded"]:
            progress.set_postfix(acc=f"{tally['correct'] / tally['graded']:.3f}", calls=tally["calls"])
        if error is not None:
            log.warning("problem %s repeat %s failed: %s", *key, error)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in self.cfg.method.stop:
            text = text.split(stop)[0]
        return text

    def _record(self, problem: Problem, repeat: int, output, error, wall_s: float) -> dict:
        record = {
            "problem_id": problem.id,
            "repeat": repeat,
            "method": self.cfg.method.name,
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
            "error": None if error is None else f"{type(error).__name__}: {error}",
        }
        if output is None:
            return record
        response = self.decode(output.response_ids)
        pred = extract_answer(response)
        if output.candidates and self.cfg.method.name == "self_consistency":
            texts = [self.decode(c) for c in output.candidates]
            answers = [extract_answer(t) for t in texts]
            pred = majority_vote(answers)
            response = texts[answers.index(pred)] if pred is not None else texts[0]
            record["candidate_answers"] = answers
        if output.candidate_rewards:
            record["candidate_answers"] = [extract_answer(self.decode(c)) for c in output.candidates]
            record["candidate_rewards"] = output.candidate_rewards
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
