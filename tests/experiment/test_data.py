import builtins
import json
import re

import pytest

from nabla_dist.experiment.data import (
    PRESETS,
    DataConfig,
    DataError,
    Problem,
    gsm8k_final_answer,
    load_problems,
)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [
    {"id": "a", "question": "1 + 1?", "answer": "2", "level": 1},
    {"id": "b", "question": "2 + 2?", "answer": 4, "level": 2},
    {"id": "c", "question": "3 + 3?", "answer": "6", "level": 3},
]


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(limit=0), "limit=0"),
        (dict(repeats=0), "repeats=0"),
        (dict(size=0), "size=0"),
        (dict(name="nope"), "name='nope'"),
        (dict(name="reasoning_gym:"), "name='reasoning_gym:'"),
        (dict(name="jsonl"), "set data.path"),
        (dict(format="csv"), "format='csv'"),
        (dict(fields={"gold": "x"}), "(not gold)"),
        (dict(name="toy", split="dev"), "split='dev'"),
        (dict(name="toy", fields={"answer": "x"}), "remove it"),
    ],
)
def test_bad_config_names_the_field_and_value(kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        DataConfig(**kwargs)


def test_data_config_is_an_omegaconf_structured_config():
    omegaconf = pytest.importorskip("omegaconf")
    base = omegaconf.OmegaConf.structured(DataConfig)
    merged = omegaconf.OmegaConf.merge(
        base, omegaconf.OmegaConf.from_dotlist(["name=gsm8k", "fields.question=prompt", "limit=5"])
    )
    cfg = omegaconf.OmegaConf.to_object(merged)
    assert cfg == DataConfig(name="gsm8k", fields={"question": "prompt"}, limit=5)
    with pytest.raises(ValueError, match="repeats=0"):
        omegaconf.OmegaConf.to_object(
            omegaconf.OmegaConf.merge(base, omegaconf.OmegaConf.from_dotlist(["repeats=0"]))
        )


# --- local files ----------------------------------------------------------------------------


def test_jsonl_rows_become_problems_with_extra_columns_in_meta(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", ROWS)
    problems = load_problems(DataConfig(name="jsonl", path=path))
    assert problems == [
        Problem("a", "1 + 1?", "2", {"level": 1}),
        Problem("b", "2 + 2?", "4", {"level": 2}),
        Problem("c", "3 + 3?", "6", {"level": 3}),
    ]


def test_json_round_trip(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS}))
    jsonl = _write_jsonl(tmp_path / "p.jsonl", ROWS)
    expected = load_problems(DataConfig(name="jsonl", path=jsonl))
    assert load_problems(DataConfig(name="json", path=str(tmp_path / "p.json"))) == expected
    assert load_problems(DataConfig(name="json", path=str(tmp_path / "wrapped.json"))) == expected


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "unique_id": ["x/1.json", "x/2.json"],
        "problem": ["What is $1+1$?", "What is $2^3$?"],
        "answer": ["2", "8"],
        "subject": ["Algebra", "Algebra"],
    })
    path = tmp_path / "math500.parquet"
    pq.write_table(table, path)
    problems = load_problems(DataConfig(name="math500", path=str(path)))
    assert problems == [
        Problem("x/1.json", "What is $1+1$?", "2", {"subject": "Algebra"}),
        Problem("x/2.json", "What is $2^3$?", "8", {"subject": "Algebra"}),
    ]


def test_format_comes_from_the_extension_unless_given(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(DataError, match="set data.format"):
        load_problems(DataConfig(name="math500", path=str(path)))
    assert len(load_problems(DataConfig(name="json", path=str(path), format="jsonl"))) == 3
    assert len(load_problems(DataConfig(name="jsonl", path=str(path)))) == 3


def test_field_mapping_overrides_the_preset_per_key(tmp_path):
    rows = [{"pid": "p1", "prompt": "Q?", "gold": "7", "answer": "wrong column"}]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = DataConfig(name="jsonl", path=path,
                     fields={"id": "pid", "question": "prompt", "answer": "gold"})
    assert load_problems(cfg) == [Problem("p1", "Q?", "7", {"answer": "wrong column"})]


def test_absent_id_column_gives_row_indices(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": "q1", "answer": "1"},
                                               {"question": "q2", "answer": "2"}])
    assert [p.id for p in load_problems(DataConfig(name="jsonl", path=path))] == ["0", "1"]


def test_empty_answer_mapping_means_no_gold(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "q"}])
    problems = load_problems(DataConfig(name="jsonl", path=path, fields={"answer": ""}))
    assert problems == [Problem("a", "q", None, {})]


def test_integral_float_answers_read_as_integers(tmp_path):
    path = _write_jsonl(tmp_path / "amc.jsonl", [{"id": 0, "problem": "q", "answer": 142.0}])
    assert load_problems(DataConfig(name="amc", path=path))[0].answer == "142"


@pytest.mark.parametrize(
    "rows, row_number, column",
    [
        ([ROWS[0], {"id": "b", "answer": "4"}], 2, "question"),
        ([ROWS[0], ROWS[1], {"id": "c", "question": "q", "answer": "  "}], 3, "answer"),
        ([ROWS[0], {"id": "b", "question": "q"}], 2, "answer"),
        ([ROWS[0], {"id": "", "question": "q", "answer": "1"}], 2, "id"),
        ([ROWS[0], ROWS[1], {"id": "a", "question": "q", "answer": "1"}], 3, "id"),
    ],
    ids=["missing question", "empty answer", "missing answer", "empty id", "duplicate id"],
)
def test_bad_row_names_file_row_and_field(tmp_path, rows, row_number, column):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_problems(DataConfig(name="jsonl", path=path))
    message = str(err.value)
    assert "bad.jsonl" in message
    assert f"row {row_number}," in message
    assert f"field {column!r}" in message


def test_duplicate_id_names_both_rows(tmp_path):
    path = _write_jsonl(tmp_path / "dup.jsonl", [ROWS[0], ROWS[1], ROWS[0]])
    with pytest.raises(DataError, match=r"row 3, field 'id': duplicate id 'a' \(first at row 1\)"):
        load_problems(DataConfig(name="jsonl", path=path))


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"id": "b", "question": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl, row 3: not valid JSON"):
        load_problems(DataConfig(name="jsonl", path=str(path)))


def test_json_that_is_not_a_list_of_objects_is_refused(tmp_path):
    (tmp_path / "obj.json").write_text(json.dumps({"rows": ROWS}))
    (tmp_path / "ints.json").write_text(json.dumps([ROWS[0], 3]))
    with pytest.raises(DataError, match=r"obj\.json: top-level dict"):
        load_problems(DataConfig(name="json", path=str(tmp_path / "obj.json")))
    with pytest.raises(DataError, match=r"ints\.json, row 2: a int, not an object"):
        load_problems(DataConfig(name="json", path=str(tmp_path / "ints.json")))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: no such file"):
        load_problems(DataConfig(name="jsonl", path=str(tmp_path / "nowhere.jsonl")))


# --- presets --------------------------------------------------------------------------------


def test_gsm8k_final_answer_is_after_the_hashes():
    assert gsm8k_final_answer("She pays 3 * 4 = <<3*4=12>>12.\n#### 1,212") == "1212"
    with pytest.raises(ValueError, match="####"):
        gsm8k_final_answer("The answer is 12.")


def test_gsm8k_preset_extracts_answers_and_keeps_the_solution(tmp_path):
    rows = [{"question": "Q1", "answer": "2 + 2 = 4\n#### 4"},
            {"question": "Q2", "answer": "no final answer here"}]
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", rows[:1])
    assert load_problems(DataConfig(name="gsm8k", path=path)) == [
        Problem("0", "Q1", "4", {"reference_solution": "2 + 2 = 4\n#### 4"})
    ]
    bad = _write_jsonl(tmp_path / "gsm8k_bad.jsonl", rows)
    with pytest.raises(DataError, match=r"gsm8k_bad\.jsonl, row 2, field 'answer': no \"####\""):
        load_problems(DataConfig(name="gsm8k", path=bad))


@pytest.mark.parametrize(
    "name, columns",
    [
        ("math500", ("unique_id", "problem", "answer")),
        ("aime2024", ("id", "problem", "answer")),
        ("aime2025", ("id", "problem", "answer")),
        ("amc", ("id", "problem", "answer")),
        ("gsm8k", ("id", "question", "answer")),
    ],
)
def test_benchmark_presets_read_their_own_column_names(tmp_path, name, columns):
    id_col, question_col, answer_col = columns
    answer = "#### 5" if name == "gsm8k" else "5"
    path = _write_jsonl(tmp_path / f"{name}.jsonl",
                        [{id_col: "p1", question_col: "Q", answer_col: answer}])
    assert load_problems(DataConfig(name=name, path=path)) == [
        Problem("p1", "Q", "5", {"reference_solution": answer} if name == "gsm8k" else {})
    ]
    assert PRESETS[name].hub_id


def test_preset_without_path_or_datasets_says_to_pass_a_path(monkeypatch):
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a: None if name == "datasets" else real_find_spec(name, *a),
    )
    with pytest.raises(DataError, match=r"HuggingFaceH4/MATH-500.*set data\.path"):
        load_problems(DataConfig(name="math500"))


# --- packaged and generated sources ---------------------------------------------------------


def test_builtin_set_loads_with_answers():
    problems = load_problems(DataConfig())
    assert 10 <= len(problems) <= 50
    assert all(p.answer and p.question.startswith("Compute ") for p in problems)


def test_champ_loads_its_problems_with_free_form_answers_kept():
    problems = load_problems(DataConfig(name="champ"))
    assert len(problems) > 200
    assert all(p.answer for p in problems)
    assert any(not re.fullmatch(r"-?\d+", p.answer) for p in problems)
    assert problems[0].meta["category"]


@pytest.mark.parametrize("task", ["gsm_symbolic", "basic_arithmetic"])
def test_reasoning_gym_gives_the_requested_number_with_answers(task):
    pytest.importorskip("reasoning_gym")
    problems = load_problems(DataConfig(name=f"reasoning_gym:{task}", size=7, seed=3))
    assert len(problems) == 7
    assert all(p.question and p.answer for p in problems)
    assert len({p.id for p in problems}) == 7
    json.dumps([p.meta for p in problems])  # metadata is plain JSON
    assert problems == load_problems(DataConfig(name=f"reasoning_gym:{task}", size=7, seed=3))


def test_reasoning_gym_unknown_task_says_what_to_pick():
    pytest.importorskip("reasoning_gym")
    with pytest.raises(ValueError, match="gsm_symbolic"):
        load_problems(DataConfig(name="reasoning_gym:no_such_task", size=2))


def test_toy_source_splits_are_disjoint_and_seeded():
    train = load_problems(DataConfig(name="toy", split="train", size=300, seed=0))
    test = load_problems(DataConfig(name="toy", split="test", size=300, seed=0))
    assert len(train) == len(test) == 300
    assert not {p.question for p in train} & {p.question for p in test}
    assert train != load_problems(DataConfig(name="toy", split="train", size=300, seed=1))
    assert train[0].meta["solution"].endswith(f"\\boxed{{{train[0].answer}}}.")


# --- shuffle and limit ----------------------------------------------------------------------


def test_shuffle_is_deterministic_and_comes_before_limit():
    base = dict(name="toy", size=100)
    first = load_problems(DataConfig(**base, shuffle_seed=1, limit=10))
    assert first == load_problems(DataConfig(**base, shuffle_seed=1, limit=10))
    assert first != load_problems(DataConfig(**base, shuffle_seed=2, limit=10))
    assert first != load_problems(DataConfig(**base, limit=10))  # shuffled before the cut
    full = load_problems(DataConfig(**base, shuffle_seed=1))
    assert first == full[:10]
    assert sorted(p.id for p in full) == [p.id for p in load_problems(DataConfig(**base))]


def test_repeats_do_not_duplicate_problems():
    assert len(load_problems(DataConfig(name="toy", size=5, repeats=4))) == 5


def test_loading_never_needs_the_network(monkeypatch):
    real_import = builtins.__import__

    def no_network_packages(name, *args, **kwargs):
        if name.split(".")[0] in {"datasets", "huggingface_hub", "requests", "urllib3"}:
            raise AssertionError(f"{name} imported while loading a local source")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_network_packages)
    for cfg in (DataConfig(), DataConfig(name="champ"), DataConfig(name="toy", size=3)):
        assert load_problems(cfg)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_problems(DataConfig(name="jsonl", path=str(tmp_path / "empty.jsonl")))


def test_gsm8k_without_gold_needs_no_final_answer(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Q1"}])
    problems = load_problems(DataConfig(name="gsm8k", path=path, fields={"answer": ""}))
    assert problems == [Problem("0", "Q1", None, {})]


def test_champ_path_must_be_a_champ_file(tmp_path):
    path = _write_jsonl(tmp_path / "other.json", ROWS)
    with pytest.raises(DataError, match=r"other\.json: not a CHAMP v0\.json"):
        load_problems(DataConfig(name="champ", path=path))
