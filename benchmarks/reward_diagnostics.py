"""Does the reward gradient point the right way? Figures at the first wrong digit of wrong rollouts.

For toy problems, sample rollouts with the method's rollout sampler (every position's logits
kept). For each wrong rollout, take its first token off the reference solution
(`toy_task.first_error`) and the token a correct continuation writes there (the *right*
token). Where both are digits, run at that position what ∇-Reasoner runs at a position it
optimizes, through the same engines and program pieces (`NablaReasoner.gradient`,
`optimize_position`, `resample`, `rollout`, `accept`): committed = the rollout before the
position, ahead = the rest of it. Reported:

0. how the reward ranks the rollouts of one problem (within-problem AUC, Best-of-n);
1. the rank of the right digit under −∂L/∂y at the position (in the vocabulary, and among the
   ten digits of its kind: with or without a leading space), and how often −∂L/∂y favours the
   right digit over the written one;
2. how often DTO's refined distribution puts more mass on the right digit than the rollout's
   did (softmax at τ = 1 of the optimized logits and of the rollout logits z_0);
3. how often the resample (the method's resampler and seed) draws the right digit, against
   the same draw from the unrefined z_0;
4. where the resample differs from the written digit: the regenerated proposal, the rejection
   test, and the rejection rate split by whether the proposal's final answer is right.

And how many of these first errors ∇-Reasoner's confidence selection reaches (confidence ≤
threshold there and at no earlier position): the figures above hold where it does.

    python benchmarks/reward_diagnostics.py --problems 200                 # shipped pair, train split
    python benchmarks/reward_diagnostics.py --policy DIR --reward DIR --split test

Problems default to the train split with seed 1 (a stream `nabla-dist train-toy` does not
draw: it draws seed 0), so looking at these figures tunes nothing on the demo's problems.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time

import torch

from nabla_dist.algorithm.dto import optimize_position
from nabla_dist.algorithm.nabla import Ahead, NablaReasoner
from nabla_dist.algorithm.requests import Reward, Rollout
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.grading import grade
from nabla_dist.experiment.build import build_runtime, with_model_defaults
from nabla_dist.experiment.run import problem_seed
from nabla_dist.experiment.toy_task import first_error, generate, right_continuation
from nabla_dist.experiment.train_toy import auc, group_indices, within_problem_auc

DIGIT = re.compile(r" ?\d")


def digit_kinds(tokenizer) -> dict[int, list[int]]:
    """token id -> the ten digit tokens of its kind (same leading space), for digit tokens."""
    kinds: dict[bool, list[int]] = {True: [], False: []}
    for token in range(len(tokenizer)):
        text = tokenizer.decode([token])
        if DIGIT.fullmatch(text):
            kinds[text.startswith(" ")].append(token)
    return {t: kind for kind in kinds.values() for t in kind}


def first_wrong_token(tokenizer, question: str, tokens: list[int]) -> tuple[int, int] | None:
    """(index, right token) of the first generated token that leaves the reference solution."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    error = first_error(question, text)
    if error is None:
        return None
    for k in range(len(tokens)):
        written = tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)
        if len(written) > error:
            before = tokenizer.decode(tokens[:k], skip_special_tokens=True)
            rest = right_continuation(question, before)
            if not rest:
                return None
            return k, tokenizer(rest, add_special_tokens=False)["input_ids"][0]
    return None


def case(runtime, cfg, problem, prompt, seed: int, kinds: dict[int, list[int]]):
    """Program: one rollout; if wrong at a digit, ∇-Reasoner's steps at its first error."""
    method, tokenizer = cfg.method, runtime.prompts.tokenizer
    nabla = with_model_defaults(method, runtime.prompts)  # top_k from the generation config
    result = yield Rollout(prompt.ids, nabla.max_new_tokens, nabla.rollout, seed, latents="logits")  # every position's z
    text = tokenizer.decode(result.tokens, skip_special_tokens=True)
    (scored,) = yield [Reward(prompt.text, result.tokens)]
    sample = {"problem": problem.id, "correct": grade(text, problem.answer).correct, "reward": scored.reward}
    if sample["correct"]:
        return {"kind": "right", **sample}
    found = first_wrong_token(tokenizer, problem.question, result.tokens)
    if found is None or result.tokens[found[0]] not in kinds or found[1] not in kinds:
        return {"kind": "wrong, first error not at a digit", **sample}
    k, right = found
    written = result.tokens[k]
    threshold = nabla.confidence_threshold
    uncertain = (result.confidence <= threshold) if threshold is not None else torch.ones(len(result.tokens), dtype=torch.bool)
    reasoner = NablaReasoner(prompt, nabla, seed)
    reasoner.committed = list(result.tokens[:k])
    ahead = Ahead.from_rollout(result, forced=[]).drop(k)

    # ∂L/∂y_0 on the straight-through forward sequence, argmax z_i at every ahead position (Alg. 2)
    grad = (yield from reasoner.gradient(ahead.argmax, [0], "inner")).grads[0]  # [V]
    descent = -grad
    digits = kinds[right]
    # as nabla.py calls it with configs/toy.yaml (no norm probe, so no first gradient to reuse)
    outcome = yield from optimize_position(ahead.latents[0], None, reasoner.grad_for_token(ahead), nabla)
    before, after = torch.softmax(ahead.latents[0].float(), -1), torch.softmax(outcome.logits.float(), -1)
    t = reasoner.resample(outcome.logits)
    record = {
        "kind": "wrong at a digit",
        **sample,
        "selected": bool(uncertain[k]) and not bool(uncertain[:k].any()),
        "uncertain_here": bool(uncertain[k]),
        "rank_vocab": int((descent > descent[right]).sum()) + 1,
        "rank_digits": int((descent[digits] > descent[right]).sum()) + 1,
        "digits_of_kind": len(digits),
        "right_over_written": bool(descent[right] > descent[written]),
        "mass_before": float(before[right]),
        "mass_after": float(after[right]),
        "refined_argmax_right": int(outcome.logits.argmax()) == right,
        "resample_right": t == right,
        "resample_unrefined_right": reasoner.resample(ahead.latents[0]) == right,
        "resample_written": t == written,
        "grad_evaluations": outcome.grad_evaluations,
    }
    if t != written and t not in prompt.stop_token_ids:
        proposal = Ahead.from_rollout((yield from reasoner.rollout([t])), forced=[t])
        response = tokenizer.decode(reasoner.committed + proposal.tokens, skip_special_tokens=True)
        record["proposal_right"] = grade(response, problem.answer).correct
        record["accepted"] = yield from reasoner.accept(ahead, proposal)
    return record


def share(records: list[dict], key: str) -> str:
    values = [r[key] for r in records if key in r]
    return f"{sum(values) / len(values):.3f} ({sum(values)}/{len(values)})" if values else "n/a"


def reward_ranking(records: list[dict], samples: int) -> dict:
    """How the reward ranks the rollouts: AUC over all and within problems, and the accuracy
    of picking the highest-scored of a problem's first n rollouts (Best-of-n) against pass@n."""
    scores, labels, groups = ([r[k] for r in records] for k in ("reward", "correct", "problem"))
    within, mixed = within_problem_auc(scores, labels, groups)
    members = group_indices(groups)
    out = {
        "reward AUC over all rollouts": round(auc(scores, labels) or float("nan"), 3),
        f"reward AUC within a problem (mean over {mixed} problems with right and wrong rollouts)":
            round(within, 3) if within is not None else "n/a",
    }
    n = 1
    while n <= samples:
        picks = [max(idx[:n], key=scores.__getitem__) for idx in members]
        out[f"Best-of-{n} accuracy (pass@{n})"] = (
            f"{sum(labels[i] for i in picks) / len(picks):.3f} "
            f"({sum(any(labels[i] for i in idx[:n]) for idx in members) / len(members):.3f})"
        )
        n *= 2
    return out


def summarize(records: list[dict], samples: int) -> dict:
    cases = [r for r in records if r["kind"] == "wrong at a digit"]
    out = {
        "rollouts": len(records),
        "right": sum(r["kind"] == "right" for r in records),
        **reward_ranking(records, samples),
        "wrong, first error not at a digit": sum(r["kind"] == "wrong, first error not at a digit" for r in records),
        "wrong at a digit (cases)": len(cases),
    }
    if not cases:
        return out
    proposals = [r for r in cases if "accepted" in r]
    right_p = [r for r in proposals if r["proposal_right"]]
    wrong_p = [r for r in proposals if not r["proposal_right"]]
    reached = [r for r in cases if r["selected"]]
    out.update({
        "confidence <= threshold at the error": share(cases, "uncertain_here"),
        "selection reaches the error (no uncertain position before it)": share(cases, "selected"),
        "1. rank of the right digit under -dL/dy, median in vocabulary": statistics.median(r["rank_vocab"] for r in cases),
        "1. mean rank among the digits of its kind (chance: mean (n+1)/2 = "
        f"{statistics.mean((r['digits_of_kind'] + 1) / 2 for r in cases):.2f})":
            round(statistics.mean(r["rank_digits"] for r in cases), 2),
        "1. right digit first among its kind": share([{**r, "top": r["rank_digits"] == 1} for r in cases], "top"),
        "1. -dL/dy larger at the right digit than at the written one": share(cases, "right_over_written"),
        "2. refined distribution puts more mass on the right digit": share(
            [{**r, "more": r["mass_after"] > r["mass_before"]} for r in cases], "more"),
        "2. mean mass on the right digit, rollout -> refined":
            f"{statistics.mean(r['mass_before'] for r in cases):.3f} -> {statistics.mean(r['mass_after'] for r in cases):.3f}",
        "2. refined argmax is the right digit": share(cases, "refined_argmax_right"),
        "3. resample draws the right digit (fixes the first error)": share(cases, "resample_right"),
        "3. same draw from the unrefined rollout logits": share(cases, "resample_unrefined_right"),
        "3. resample keeps the written digit": share(cases, "resample_written"),
        "4. proposals regenerated": len(proposals),
        "4. rejection rate, proposals with a right answer": share([{**r, "rej": not r["accepted"]} for r in right_p], "rej"),
        "4. rejection rate, proposals with a wrong answer": share([{**r, "rej": not r["accepted"]} for r in wrong_p], "rej"),
        "figures 1-3 where selection reaches the error: -dL/dy favours right over written":
            share(reached, "right_over_written"),
        "... resample fixes the error": share(reached, "resample_right"),
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="toy:policy")
    parser.add_argument("--reward", default="toy:reward")
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--seed", type=int, default=None, help="problem stream (default: 1 for train, 0 for test)")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4, help="rollouts per problem")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the records and figures here")
    parser.add_argument("overrides", nargs="*", help="configs/toy.yaml overrides, key=value (e.g. method.max_iters=50)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("toy", [f"policy.path={args.policy}", f"reward.path={args.reward}", *args.overrides])
    runtime = build_runtime(cfg)
    seed = args.seed if args.seed is not None else (1 if args.split == "train" else 0)
    problems = generate(args.problems, seed=seed, split=args.split)
    kinds = digit_kinds(runtime.prompts.tokenizer)
    records: dict = {}
    programs = (
        ((p.id, j), case(runtime, cfg, p, runtime.prompts.encode(p.question), problem_seed(cfg.seed, p.id, j), kinds))
        for p in problems for j in range(args.samples)
    )

    def on_finish(key, output, error):
        if error is not None:
            raise error
        records[key] = output

    start = time.time()
    runtime.run(programs, on_finish, max_in_flight=cfg.runtime.max_in_flight)
    ordered = [records[k] for k in sorted(records)]
    figures = summarize(ordered, args.samples)
    print(f"policy {args.policy}  reward {args.reward}  {args.split} split, seed {seed}: "
          f"{args.problems} problems x {args.samples} rollouts ({time.time() - start:.0f}s)")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "figures": figures, "records": ordered}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
