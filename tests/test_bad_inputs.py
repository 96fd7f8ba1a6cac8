"""The bad-input matrix: every user error ends in one line, `nabla-dist: error: <what> — <fix>`,
exit status 2, no traceback, and leaves the output directory exactly as it was.

Cases run the CLI in this process (`cli.main`); those where the real process matters
(Ctrl-C, a full disk, a read-only file system) run it as a subprocess. `output_dir` is
either a copy of a finished run (nothing in it may change, not even a byte) or a path that
does not exist (it must still not exist afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from nabla_dist.cli import main
from nabla_dist.experiment.results import OutputLock

FAST = ["method.max_new_tokens=8", "wandb.mode=disabled"]
RUN = ["method.name=self_consistency", "method.n=2", "data.limit=2", *FAST]  # the finished run's settings
NO_MODEL = object()  # marks that a case fails before any model could load


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_paths):
    """A finished self-consistency run: config.yaml, results.jsonl, summary.json, .lock."""
    out = tmp_path_factory.mktemp("template") / "run"
    assert main(["run", *RUN, f"output_dir={out}"]) == 0
    return out


def snapshot(root: Path):
    """Every entry under `root` with its content (a link: its target), or None if absent."""
    if not root.exists() and not root.is_symlink():
        return None
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = ("link", os.readlink(path)) if path.is_symlink() else \
            ("dir", None) if path.is_dir() else ("file", path.read_bytes())
    return state


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rows(*objects) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def row(i, **fields):
    return {"id": f"p{i}", "question": f"Compute {i} + 1.", "answer": str(i + 1), **fields}


def model_dir(tmp: Path, tiny_paths, name: str, keep=("config.json", "tokenizer.json", "tokenizer_config.json",
                                                        "chat_template.jinja", "generation_config.json")) -> Path:
    target = tmp / name
    target.mkdir()
    for file in keep:
        if (tiny_paths["policy"] / file).exists():
            shutil.copy(tiny_paths["policy"] / file, target / file)
    return target


# Each case: (argv after `run`, or a full argv for other commands; the expected line after
# "nabla-dist: error: "; where output_dir is: "run" a finished run's copy, "fresh" absent).
# Strings may use {t} (the case's tmp dir) and {out} (its output_dir).
def cases(t: Path, tiny_paths) -> dict:
    data = t / "data"
    bad_yaml = write(t / "bad.yaml", "method: {name: greedy\n")
    list_yaml = write(t / "list.yaml", "- method.name=greedy\n")
    legacy_yaml = write(t / "legacy.yaml", "reward:\n  lazy_probe: true\n")
    (data / "a_directory.jsonl").mkdir(parents=True)
    files = {
        "empty": write(data / "empty.jsonl", ""),
        "malformed": write(data / "malformed.jsonl", rows(row(0)) + '{"id": "p1", "question": \n'),
        "no_answer": write(data / "no_answer.jsonl", rows(row(0), {"id": "p1", "question": "Compute 1."})),
        "duplicate": write(data / "duplicate.jsonl", rows(row(0), row(1), {**row(2), "id": "p0"})),
        "not_object": write(data / "not_object.jsonl", rows(row(0), [1, 2])),
        "json_dict": write(data / "dict.json", json.dumps({"problems": [row(0)]})),
        "no_question": write(data / "no_question.jsonl", rows({"id": "p0", "question": " ", "answer": "1"})),
    }
    empty_dir = t / "empty_model"
    empty_dir.mkdir()
    no_weights = model_dir(t, tiny_paths, "no_weights")
    pickled = model_dir(t, tiny_paths, "pickled")
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    a_file = write(t / "a_file", "not a directory\n")
    jsonl = lambda name: ["data.name=jsonl", f"data.path={files[name]}"]  # noqa: E731
    return {
        # -- the config: keys, types, ranges (every message names the full key) ---------------
        "unknown key": (["method.nmae=3"], "unknown configuration key 'method.nmae' — did you mean method.name?"),
        "unknown top-level key": (["sed=3"], "unknown configuration key 'sed' — did you mean seed?"),
        "unknown data key": (["data.limt=3"], "unknown configuration key 'data.limt' — did you mean data.limit?"),
        "override without =": (["default", "data.limit"],
                               "override 'data.limit' is not key=value — write it as key=value, e.g. data.limit=4"),
        "wrong type": (["method.max_iters=abc"],
                       "bad value for method.max_iters: Value 'abc' of type 'str' could not be converted to Integer "
                       "— give method.max_iters a value of its type"),
        "section given a value": (["method=3"], "bad configuration: Merge error: int is not a subclass of "
                                  "MethodConfig. value: 3 — a section (method, policy, …) takes keys, e.g. "
                                  "method.name=greedy"),
        "unknown method": (["method.name=beam"],
                           "method.name='beam' is invalid — choose one of nabla, greedy, self_consistency, "
                           "best_of_n"),
        "max_iters 0": (["method.max_iters=0"], "method.max_iters=0 is invalid — use ≥ 1"),
        "negative lr": (["method.lr=-1"], "method.lr=-1.0 is invalid — use > 0"),
        "infinite lr": (["method.lr=inf"], "method.lr=inf is invalid — use a finite number"),
        "negative lambda_nll": (["method.lambda_nll=-5"],
                                "method.lambda_nll=-5.0 is invalid — use ≥ 0 (the likelihood term's weight)"),
        "negative lambda_reward": (["method.lambda_reward=-1"],
                                   "method.lambda_reward=-1.0 is invalid — use ≥ 0 (the reward term's weight)"),
        "negative grad_norm_threshold": (["method.grad_norm_threshold=-1"], "method.grad_norm_threshold=-1.0 is "
                                         "invalid — use ≥ 0, or null to turn it off"),
        "negative entropy_threshold": (["method.entropy_threshold=-3"], "method.entropy_threshold=-3.0 is invalid "
                                       "— use ≥ 0, or null to turn it off"),
        "rollout top_p": (["method.rollout.top_p=2.0"],
                          "method.rollout.top_p=2.0 is invalid — use a value in (0, 1]"),
        "resample top_p": (["method.resample.top_p=0"],
                           "method.resample.top_p=0.0 is invalid — use a value in (0, 1]"),
        "negative temperature": (["method.rollout.temperature=-1"],
                                 "method.rollout.temperature=-1.0 is invalid — use ≥ 0 (0 = greedy)"),
        "policy dtype": (["policy.dtype=int8"],
                         "policy.dtype='int8' is invalid — choose one of float32, bfloat16, float16"),
        "reward dtype": (["reward.dtype=int8"],
                         "reward.dtype='int8' is invalid — choose one of float32, bfloat16, float16"),
        "runtime kind": (["runtime.kind=slurm"], "runtime.kind='slurm' is invalid — choose one of local, ray"),
        "batch size 0": (["runtime.max_batch_size=0"], "runtime.max_batch_size=0 is invalid — use ≥ 1"),
        "reply timeout 0": (["runtime.reply_timeout_s=0"], "runtime.reply_timeout_s=0.0 is invalid — use seconds "
                            "> 0, or null to turn it off"),
        "not a device": (["runtime.device=tpu9"], "runtime.device='tpu9' is invalid — use a torch device name: cpu, "
                         "cuda, cuda:1, …"),
        "data.limit 0": (["data.limit=0"], "data.limit=0 is invalid — use ≥ 1, or null to turn it off"),
        "data.repeats 0": (["data.repeats=0"], "data.repeats=0 is invalid — use ≥ 1"),
        "unknown data source": (["data.name=nope"], "data.name='nope' is invalid — use one of builtin, toy, jsonl, "
                                "json, parquet, math500, aime2024, aime2025, amc, gsm8k, champ, reasoning_gym:<task>"),
        "jsonl without path": (["data.name=jsonl"],
                               "data.path=None is invalid — data.name=jsonl reads a local file: set data.path"),
        "unknown data format": (["data.format=csv"],
                                "data.format='csv' is invalid — use one of jsonl, json, parquet, or null to turn it "
                                "off"),
        "wandb mode": (["wandb.mode=loud"], "wandb.mode='loud' is invalid — use disabled, offline or online"),
        # -- the experiment file ----------------------------------------------------------------
        "missing yaml": ([str(t / "missing.yaml")], f"experiment file '{t}/missing.yaml' does not exist — check the "
                         "path"),
        "malformed yaml": ([str(bad_yaml)], f"{bad_yaml} is not valid YAML (did not find expected ',' or '}}' at "
                           "line 2, column 1) — fix the file"),
        "yaml list": ([str(list_yaml)], f"{list_yaml} holds a list, not a mapping of settings — write it as "
                      "`section: {key: value}` lines, e.g. `method: {name: greedy}`"),
        "removed key": ([str(legacy_yaml)], f"{legacy_yaml}: reward.lazy_probe no longer exists (the reward engine "
                        "has no gradient-norm probe; policy.lazy_probe is the switch) — delete it"),
        # -- the problems: checked before any model loads -----------------------------------------
        "missing data file": (["data.name=jsonl", f"data.path={data}/nope.jsonl"],
                              f"{data}/nope.jsonl: no such file — check data.path", NO_MODEL),
        "data path is a directory": (["data.name=jsonl", f"data.path={data}/a_directory.jsonl"],
                                     f"{data}/a_directory.jsonl is a directory, not a problem file — set data.path "
                                     "to a file in it", NO_MODEL),
        "empty data file": (jsonl("empty"), f"{files['empty']}: no rows in it — check data.path and data.split",
                            NO_MODEL),
        "malformed data line": (jsonl("malformed"), f"{files['malformed']}, row 2: not valid JSON (Expecting value at "
                                "column 26) — each line must be one JSON object", NO_MODEL),
        "missing answer": (jsonl("no_answer"), f"{files['no_answer']}, row 2, field 'answer': missing or empty "
                           'answer — fill it in, drop the row, or set data.fields.answer="" for a set without gold '
                           "answers", NO_MODEL),
        "blank question": (jsonl("no_question"), f"{files['no_question']}, row 1, field 'question': missing or empty "
                           "question — fill it in, drop the row, or map data.fields.question to the column that "
                           "holds it", NO_MODEL),
        "duplicate id": (jsonl("duplicate"), f"{files['duplicate']}, row 3, field 'id': duplicate id 'p0' (first at "
                         "row 1) — make the ids unique", NO_MODEL),
        "row not an object": (jsonl("not_object"), f"{files['not_object']}, row 2: a list, not an object — every "
                              "row must be a JSON object with the question and answer fields", NO_MODEL),
        "json top-level dict": (["data.name=json", f"data.path={files['json_dict']}"], f"{files['json_dict']}: "
                                "top-level dict — a .json file must hold a list of objects (or {\"data\": [...]})",
                                NO_MODEL),
        # -- models: checked on their files before output_dir is touched --------------------------
        "missing model path": (["policy.path=/nonexistent/model"], "no such model directory: '/nonexistent/model' — "
                               "pass a directory saved with save_pretrained, a tiny:, toy: or smollm2: model"),
        "hub-looking path": (["policy.path=someorg/somemodel"], "no such model directory: 'someorg/somemodel' — pass "
                             "a directory saved with save_pretrained, a tiny:, toy: or smollm2: model, or "
                             "hf:someorg/somemodel to download it from the Hugging Face hub"),
        "empty directory": ([f"policy.path={empty_dir}"], f"'{empty_dir}' is not a model directory (no config.json, "
                            "no tokenizer files) — pass a directory saved with save_pretrained"),
        "model path is a file": ([f"policy.path={a_file}"], f"'{a_file}' is a file, not a model directory — pass the "
                                 "directory that holds its config.json"),
        "unknown tiny model": (["policy.path=tiny:nope"], "unknown tiny model 'tiny:nope' — choose one of "
                               "tiny:policy, tiny:policy_tied, tiny:reward, tiny:reward_other, tiny:tokenizer"),
        "unknown toy model": (["policy.path=toy:nope"], "unknown toy model 'toy:nope' — choose one of toy:policy, "
                              "toy:reward"),
        "bad hub id": (["policy.path=hf:a/b/c"], "'hf:a/b/c' is not a hub id — write hf:<org>/<name>, e.g. "
                       "hf:Qwen/Qwen2.5-0.5B-Instruct"),
        "no weights": ([f"policy.path={no_weights}"], f"'{no_weights}' has no weights (model.safetensors) — pass a "
                       "directory saved with save_pretrained"),
        "pickle weights": ([f"policy.path={pickled}"], f"'{pickled}' holds its weights only as pickle "
                           "(pytorch_model.bin), which can run code when loaded — convert them to safetensors, or "
                           "set policy.allow_pickle=true if you trust the file"),
        "nabla without reward": (["method.name=nabla", "reward=null"], "method.name=nabla needs a reward model and "
                                 "reward is null — set reward.path (e.g. reward.path=tiny:reward), or pick a method "
                                 "without one (greedy, self_consistency)"),
        "verdict of several tokens": (["method.name=best_of_n", "reward.kind=verifier", "reward.path=tiny:policy"],
                                      "reward.path='tiny:policy' cannot serve this policy: reward.verdict='yes' is 3 "
                                      f"tokens for '{tiny_paths['policy']}' — choose a verdict word that is a single "
                                      "token (e.g. 'yes' or 'Yes')"),
        # -- the output directory ---------------------------------------------------------------------
        "output_dir is a file": ([f"output_dir={a_file}"], f"output_dir='{a_file}' is a file, not a directory — "
                                 "choose another output_dir"),
        "output_dir under a file": ([f"output_dir={a_file}/run"], f"output_dir='{a_file}/run': a part of that path "
                                    "is a file — choose another output_dir"),
        "resume with other settings": (["seed=5"], "output_dir {out} holds results of a different configuration "
                                       "(saved → now: seed: 0 → 5) — use another output_dir, or rerun with the "
                                       "saved values; only output_dir, runtime.*, wandb.*, data.limit, data.repeats, "
                                       "policy.prefix_cache, reward.prefix_cache, policy.lazy_probe, "
                                       "policy.norm_chunk, policy.grad_memory, reward.grad_memory, policy.allow_pickle, "
                                       "reward.allow_pickle may change when "
                                       "resuming"),
        # -- other commands -----------------------------------------------------------------------------
        "rescore n out of range": (["rescore", "{out}", "--n", "3"], "--n 3 is out of range — the run drew N=2 "
                                   "candidates per problem: use n from 1 to 2"),
        "rescore a non-run": (["rescore", str(data)], f"{data} holds no config.yaml — pass the output_dir of a "
                              "self_consistency or best_of_n run", "fresh"),
        "missing argument": (["rescore"], "the following arguments are required: output_dir — see `nabla-dist "
                             "rescore --help`"),
        "bad option value": (["rescore", "{out}", "--n", "two"], "argument --n: invalid int value: 'two' — see "
                             "`nabla-dist rescore --help`"),
    }


# cases that change the finished run's directory itself before running the same command
def damaged(out: Path, how: str, tmp: Path) -> str:
    """Damage `out` (a copy of the finished run); returns the expected message."""
    if how == "no config.yaml":
        (out / "config.yaml").unlink()
        return (f"output_dir {out} holds results but no config.yaml, so nothing says which settings made them — "
                "restore its config.yaml (a copy of the first run's settings), or use another output_dir")
    if how == "unreadable config.yaml":
        (out / "config.yaml").write_text("method: [\n")
        return (f"cannot resume {out}: while parsing a flow node — restore its config.yaml, or use another "
                "output_dir")
    if how == "corrupt results line":
        lines = (out / "results.jsonl").read_text().splitlines()
        (out / "results.jsonl").write_text(lines[0][:-1] + "\n" + "\n".join(lines[1:]) + "\n")
        return (f"{out}/results.jsonl, line 1: a complete line that is not a result (Expecting ',' delimiter) — fix "
                "or delete that line (nabla-dist leaves the file as it is), or use another output_dir")
    if how in ("linked .lock", "linked results.jsonl", "linked summary.json"):
        name = how.split()[1]
        target = write(tmp / "elsewhere" / name, "precious\n")
        (out / name).unlink()
        (out / name).symlink_to(target)
        return (f"{out}/{name} is a symbolic link (to {target}) — nabla-dist does not read or write the files of "
                "an output_dir through links; replace the link by the file itself, or use another output_dir")
    if how == "busy":
        return (f"{out} is being written by another run (it holds {out}/.lock) — wait for it to end, or use another "
                "output_dir")
    raise AssertionError(how)


DAMAGES = ["no config.yaml", "unreadable config.yaml", "corrupt results line", "linked .lock", "linked results.jsonl",
           "linked summary.json", "busy"]


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def check_one_line(err: str, expected: str) -> None:
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"nabla-dist: error: {expected}"]
    what, _, fix = expected.partition(" — ")
    assert what and fix, "a message says what is wrong and how to fix it"


with tempfile.TemporaryDirectory() as scratch:  # the case names, for parametrize
    CASE_IDS = list(cases(Path(scratch), {"policy": Path(scratch) / "no_model"}))


@pytest.mark.parametrize("case", CASE_IDS)
def test_a_bad_input_is_one_line_with_exit_2_and_changes_nothing(case, finished_run, tiny_paths, tmp_path, capsys,
                                                                  monkeypatch):
    spec = cases(tmp_path, tiny_paths)[case]
    argv, expected = spec[0], spec[1]
    fresh = "fresh" in spec[2:]
    out = tmp_path / ("fresh_out" if fresh else "out")
    if not fresh:
        shutil.copytree(finished_run, out, symlinks=True)
    if NO_MODEL in spec[2:]:  # a data error must come before any model would load
        import nabla_dist.experiment.run as run

        monkeypatch.setattr(run, "preflight", lambda cfg: pytest.fail("models were checked before the data"))
    fill = lambda s: s.replace("{out}", str(out))  # noqa: E731
    argv = [fill(a) for a in argv]
    if argv[0] != "rescore":  # `run [EXPERIMENT] the finished run's settings, then the case's`
        experiment = [argv.pop(0)] if "=" not in argv[0] else []
        argv = ["run", *experiment, *RUN, f"output_dir={out}", *argv]
    before = snapshot(out)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    check_one_line(err, fill(expected))
    assert snapshot(out) == before


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_output_dir_is_refused_in_one_line_and_left_as_it_is(how, finished_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out, symlinks=True)
    expected = damaged(out, how, tmp_path)
    before, elsewhere = snapshot(out), snapshot(tmp_path / "elsewhere")
    holder = OutputLock(out) if how == "busy" else None
    try:
        code, err = run_cli(["run", *RUN, f"output_dir={out}"], capsys)
    finally:
        if holder is not None:
            holder.release()
    assert code == 2, err
    check_one_line(err, expected)
    assert snapshot(out) == before and snapshot(tmp_path / "elsewhere") == elsewhere


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["--debug", "run", "method.lr=-1", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "InvalidSetting" in err
    assert err.strip().splitlines()[-1] == "nabla-dist: error: method.lr=-1.0 is invalid — use > 0"


def test_report_and_rescore_read_a_torn_tail_without_writing_it(finished_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out, symlinks=True)
    with open(out / "results.jsonl", "ab") as f:
        f.write(b'{"problem_id": "x", "rep')  # a run is writing this line, or died writing it
    results = (out / "results.jsonl").read_bytes()
    assert main(["rescore", str(out), "--n", "1", "2"]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (out / "results.jsonl").read_bytes() == results
    summary = json.loads((out / "rescore.json").read_text())
    assert summary["self_consistency@2"]["results"] == 2  # the torn line is not a result


# -- the real process ---------------------------------------------------------------------------------
def cli_process(args, **kwargs):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nabla_dist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def complete_lines(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


def test_ctrl_c_stops_cleanly_with_exit_130_keeping_only_complete_results(tmp_path):
    out = tmp_path / "out"
    command = ["run", "method.name=greedy", "data.name=toy", "data.size=300", "data.limit=300",
               "method.max_new_tokens=64", "runtime.max_in_flight=1", "wandb.mode=disabled", f"output_dir={out}"]
    process = cli_process(command, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    kept = complete_lines(results)
    assert 2 <= len(kept) < 300
    n = len(kept)
    assert err.strip().splitlines()[-1] == (
        f"nabla-dist: interrupted after {n} new result{'' if n == 1 else 's'} ({n} of 300 done in {out}) — rerun "
        "the same command to resume")
    assert "Traceback" not in err


def unshare_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not unshare_available(), reason="needs unprivileged user and mount namespaces")


def in_namespace(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`script` (sh) as root of a private user and mount namespace: it may mount tmpfs and
    read-only binds that only it sees."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PY": sys.executable}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=timeout)


@needs_unshare
def test_a_full_disk_is_one_line_keeps_every_finished_result_and_leaves_no_temporary_file(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    # 64 KiB of disk: config.yaml and a few results fit, then ENOSPC while results are written
    command = (f'mount -t tmpfs -o size=64k tmpfs {disk} && "$PY" -m nabla_dist run method.name=greedy '
               f'data.name=toy data.size=400 data.limit=400 method.max_new_tokens=16 wandb.mode=disabled '
               f'output_dir={out}; echo "exit=$?"; ls -a {out}; cat {out}/results.jsonl | wc -l')
    done = in_namespace(command)
    lines = done.stdout.splitlines()
    assert lines[0] == "exit=2", done.stderr
    err = done.stderr.strip().splitlines()
    assert err[-1] == (f"nabla-dist: error: No space left on device: {out}/results.jsonl — free some space, then "
                       "rerun the same command to resume (finished results are kept)")
    assert "Traceback" not in done.stderr
    names = set(lines[1:-1])
    assert not [n for n in names if n.endswith(".tmp")], names
    assert {"config.yaml", "results.jsonl", ".lock"} <= names
    assert int(lines[-1]) >= 1  # results finished before the disk filled are kept


@needs_unshare
def test_a_read_only_output_dir_is_one_line_and_unchanged(finished_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out, symlinks=True)
    (out / "summary.json").unlink()  # so the run has something left to write
    before = snapshot(out)
    command = (f'mount --bind {out} {out} && mount -o remount,ro,bind {out} && "$PY" -m nabla_dist run '
               f'{" ".join(RUN)} output_dir={out}; echo "exit=$?"')
    done = in_namespace(command)
    assert done.stdout.splitlines()[-1] == "exit=2", done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"nabla-dist: error: Read-only file system: {out}/config.yaml — the file system is read-only: choose "
        "another output_dir")
    assert snapshot(out) == before
