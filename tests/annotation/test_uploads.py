"""Tests for annotation/uploads.py: pure Python, no database, no Django settings."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from annotation import uploads
from annotation.uploads import (
    BATTLE_WINNERS,
    MAX_REPORTED_ERRORS,
    RowError,
    UploadError,
    parse_battles,
    parse_imported_outputs,
    parse_prompts,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "annotation" / "demo"


def errors_of(call, *args, **kwargs) -> list[RowError]:
    with pytest.raises(UploadError) as info:
        call(*args, **kwargs)
    return info.value.errors


def jsonl(*objects) -> bytes:
    return "\n".join(json.dumps(o) for o in objects).encode()


# --- prompts: good files ---------------------------------------------------------------


def test_it_reads_a_csv_file():
    data = (
        b"id,prompt,reference,tags,image,gold_answer\n"
        b"p1,What is 2+2?,4,math;easy,img/sum.png,4\n"
        b"p2,  Name a colour.  ,,,,\n"
    )
    parsed = parse_prompts(data, "prompts.csv")
    first, second = parsed.rows
    assert first.external_id == "p1"
    assert first.text == "What is 2+2?"
    assert first.reference == "4"
    assert first.tags == ("math", "easy")
    assert first.image == "img/sum.png"
    assert first.gold_answer == "4"
    assert first.line == 2
    assert second.text == "Name a colour."
    assert (second.reference, second.tags, second.image, second.gold_answer) == ("", (), "", "")
    assert second.line == 3
    assert parsed.warnings == ()


def test_it_reads_json_lines_and_skips_blank_lines():
    data = (
        b'{"id": "a", "prompt": "Hi", "tags": ["x", "y"], "reference": "Hello"}\n'
        b"\n"
        b"   \n"
        b'{"id": 7, "prompt": "Bye", "tags": "solo", "gold_answer": 3}\n'
    )
    rows = parse_prompts(data, "prompts.jsonl").rows
    assert [(r.external_id, r.text, r.tags, r.line) for r in rows] == [
        ("a", "Hi", ("x", "y"), 1),
        ("7", "Bye", ("solo",), 4),
    ]
    assert rows[0].reference == "Hello"
    assert rows[1].gold_answer == "3"


def test_it_reads_a_json_list_and_records_the_line_each_element_starts_on():
    data = json.dumps(
        [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two", "tags": []}], indent=2
    ).encode()
    rows = parse_prompts(data, "prompts.json").rows
    assert [r.external_id for r in rows] == ["a", "b"]
    assert [r.line for r in rows] == [2, 6]


def test_it_reads_json_lines_saved_with_a_json_extension():
    rows = parse_prompts(
        jsonl({"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}), "d.json"
    ).rows
    assert [r.external_id for r in rows] == ["a", "b"]


@pytest.mark.parametrize(
    "data, filename",
    [
        (b"id,prompt\na,x\n", "upload.txt"),
        (b"id\tprompt\na\tx\n", ""),
        (b'{"id": "a", "prompt": "x"}\n', "upload"),
        (b'[{"id": "a", "prompt": "x"}]', "upload.dat"),
        (b"id\tprompt\na\tx\n", "prompts.tsv"),
    ],
)
def test_it_tells_the_format_from_the_content_when_the_extension_does_not(data, filename):
    [row] = parse_prompts(data, filename).rows
    assert (row.external_id, row.text) == ("a", "x")


def test_it_normalises_tags_by_stripping_dropping_empties_and_removing_duplicates():
    data = b"id,prompt,tags\na,x, Billing ;;easy; Billing;billing \n"
    [row] = parse_prompts(data, "p.csv").rows
    assert row.tags == ("Billing", "easy", "billing")
    [row] = parse_prompts(jsonl({"id": "a", "prompt": "x", "tags": "a; b ;a"}), "p.jsonl").rows
    assert row.tags == ("a", "b")


def test_it_warns_when_csv_tags_look_comma_separated():
    parsed = parse_prompts(b'id,prompt,tags\na,x,"billing, easy"\n', "p.csv")
    assert parsed.rows[0].tags == ("billing, easy",)
    assert parsed.warnings == (
        "line 2, field 'tags': tags are separated by ';', so a tag containing ',' was kept whole",
    )


def test_it_ignores_unknown_columns_and_keys_with_a_warning():
    parsed = parse_prompts(b"ID, Prompt ,category\na,x,c\n", "p.csv")
    assert parsed.rows[0].external_id == "a"
    assert parsed.warnings == ("ignored column 'category'",)
    data = jsonl({"id": "a", "prompt": "x", "extra": 1}, {"id": "b", "prompt": "y", "extra": 2})
    assert parse_prompts(data, "p.jsonl").warnings == ("ignored key 'extra' (first on line 1)",)


def test_it_handles_a_bom_and_crlf_line_endings():
    data = b"\xef\xbb\xbfid,prompt,tags\r\np1,caf\xc3\xa9?,a;b\r\n\r\np2,tea?,c\r\n"
    rows = parse_prompts(data, "p.csv").rows
    assert [(r.external_id, r.text, r.tags, r.line) for r in rows] == [
        ("p1", "café?", ("a", "b"), 2),
        ("p2", "tea?", ("c",), 4),
    ]
    data = b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\r\n\r\n{"id": "b", "prompt": "y"}\r\n'
    assert [r.line for r in parse_prompts(data, "p.jsonl").rows] == [1, 3]


def test_it_keeps_line_separators_that_json_allows_inside_strings():
    data = '{"id": "a", "prompt": "one\u2028two\x85three"}\n'.encode()
    [row] = parse_prompts(data, "p.jsonl").rows
    assert row.text == "one\u2028two\x85three"


def test_it_numbers_a_multi_line_csv_record_by_the_line_where_it_starts():
    data = b'id,prompt\na,"first\nsecond\nthird"\nb,\nc,"also\r\nmulti"\n,x\n'
    errors = errors_of(parse_prompts, data, "p.csv")
    assert [(e.line, e.field, e.message) for e in errors] == [
        (5, "prompt", "is empty"),
        (8, "id", "is empty"),
    ]


# --- prompts: bad rows -----------------------------------------------------------------


def test_it_names_the_line_and_field_of_a_missing_id():
    data = jsonl({"id": "a", "prompt": "x"}, {"prompt": "y", "tags": []})
    [error] = errors_of(parse_prompts, data, "p.jsonl")
    assert str(error) == "line 2, field 'id': is missing (keys found: 'prompt', 'tags')"
    [error] = errors_of(parse_prompts, b"id,prompt\n ,x\n", "p.csv")
    assert str(error) == "line 2, field 'id': is empty"


def test_it_rejects_a_prompt_that_is_empty_after_stripping():
    [error] = errors_of(parse_prompts, jsonl({"id": "a", "prompt": " \n\t"}), "p.jsonl")
    assert (error.line, error.field, error.message) == (1, "prompt", "is empty")
    [error] = errors_of(parse_prompts, jsonl({"id": "a", "prompt": None}), "p.jsonl")
    assert (error.field, error.message) == ("prompt", "is empty")


def test_it_names_both_lines_of_a_duplicate_id():
    data = b"id,prompt\na,x\nb,y\na,z\n"
    [error] = errors_of(parse_prompts, data, "p.csv")
    assert str(error) == "line 4, field 'id': duplicate id 'a' (first on line 2)"


def test_it_rejects_an_id_longer_than_200_characters():
    data = jsonl({"id": "x" * 200, "prompt": "ok"}, {"id": "y" * 201, "prompt": "too long"})
    [error] = errors_of(parse_prompts, data, "p.jsonl")
    assert str(error) == "line 2, field 'id': is 201 characters long; the limit is 200"


@pytest.mark.parametrize(
    "tags, message",
    [
        (3, "must be a list of strings or a ';'-separated string, not a number"),
        ({"a": 1}, "must be a list of strings or a ';'-separated string, not an object"),
        (["ok", 2], "item 1 must be a string, not a number"),
        (["x" * 101], f"tag {'x' * 20!r}… is 101 characters long; the limit is 100"),
    ],
)
def test_it_rejects_tags_of_the_wrong_type_in_json_lines(tags, message):
    [error] = errors_of(parse_prompts, jsonl({"id": "a", "prompt": "x", "tags": tags}), "p.jsonl")
    assert (error.line, error.field, error.message) == (1, "tags", message)


def test_it_rejects_wrong_types_for_text_fields():
    data = jsonl({"id": ["a"], "prompt": 5, "reference": {}, "image": True})
    errors = errors_of(parse_prompts, data, "p.jsonl")
    assert [(e.field, e.message) for e in errors] == [
        ("id", "must be a string, not a list"),
        ("prompt", "must be a string, not a number"),
        ("reference", "must be a string, not an object"),
        ("image", "must be a string, not true/false"),
    ]


def test_it_rejects_a_json_line_that_is_not_an_object():
    data = b'{"id": "a", "prompt": "x"}\n["b", "y"]\n"text"\n'
    errors = errors_of(parse_prompts, data, "p.jsonl")
    assert [str(e) for e in errors] == [
        "line 2: is not a JSON object (found a list)",
        "line 3: is not a JSON object (found a string)",
    ]


def test_it_reports_the_line_number_of_unparseable_json_and_keeps_checking():
    data = b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y",}\n{"id": "", "prompt": "z"}\n'
    errors = errors_of(parse_prompts, data, "p.jsonl")
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "id")]
    assert errors[0].message.startswith("is not valid JSON: Expecting property name")
    assert "(column 27)" in errors[0].message


def test_it_explains_a_single_object_spread_over_several_lines():
    data = json.dumps({"id": "a", "prompt": "x"}, indent=2).encode()
    [error] = errors_of(parse_prompts, data, "p.jsonl")
    assert error.line is None
    assert "one JSON object spread over several lines" in error.message


def test_json_list_errors_name_the_element_index_and_its_line():
    data = json.dumps([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": ""}, 3], indent=2)
    errors = errors_of(parse_prompts, data.encode(), "p.json")
    assert [str(e) for e in errors] == [
        "line 6 (index 1), field 'prompt': is empty",
        "line 10 (index 2): is not a JSON object (found a number)",
    ]


def test_json_list_duplicates_name_both_elements():
    data = b'[{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]'
    [error] = errors_of(parse_prompts, data, "p.json")
    assert (
        str(error) == "line 1 (index 1), field 'id': duplicate id 'a' (first on line 1 (index 0))"
    )


@pytest.mark.parametrize(
    "text, line, start",
    [
        (
            '[\n  {"id": "a", "prompt": "x"},\n  {"id": "b" "prompt": "y"}\n]',
            3,
            "is not valid JSON: Expecting ',' delimiter",
        ),
        (
            '[\n  {"id": "a", "prompt": "x"}\n  {"id": "b", "prompt": "y"}\n]',
            2,
            "is not valid JSON: expected ',' or ']' after element 0",
        ),
        ('[{"id": "a", "prompt": "x"},\n]', 2, "is not valid JSON: Expecting value"),
        (
            '[{"id": "a", "prompt": "x"}]\n\n]',
            3,
            "is not valid JSON: text after the list's closing ']'",
        ),
    ],
)
def test_a_json_list_that_does_not_parse_names_its_line(text, line, start):
    errors = errors_of(parse_prompts, text.encode(), "p.json")
    assert errors[-1].line == line
    assert errors[-1].message.startswith(start)


def test_it_collects_every_bad_row_before_failing():
    data = b"id,prompt\na,\n,b\nc,ok\nd,\n"
    errors = errors_of(parse_prompts, data, "p.csv")
    assert [(e.line, e.field) for e in errors] == [(2, "prompt"), (3, "id"), (5, "prompt")]


def test_it_caps_the_reported_errors_and_counts_the_rest():
    data = b"id,prompt\n" + b"".join(b"p%d,\n" % i for i in range(MAX_REPORTED_ERRORS + 7))
    with pytest.raises(UploadError) as info:
        parse_prompts(data, "p.csv")
    assert len(info.value.errors) == MAX_REPORTED_ERRORS
    assert info.value.total == MAX_REPORTED_ERRORS + 7
    assert str(info.value).endswith("\n…and 7 more")
    assert str(info.value).startswith("line 2, field 'prompt': is empty\nline 3, field")


def test_a_csv_row_with_more_values_than_columns_is_an_error_unless_the_extras_are_blank():
    errors = errors_of(parse_prompts, b"id,prompt\na,x,,\nb,y,z\n", "p.csv")
    assert [str(e) for e in errors] == ["line 3: has 3 values but the header has 2 columns"]


def test_an_unclosed_quote_is_reported_where_its_record_starts():
    [error] = errors_of(parse_prompts, b'id,prompt\na,x\nb,"never closed\nc,z\n', "p.csv")
    assert error.line == 3
    assert "quote that is never closed" in error.message


# --- prompts: bad files ----------------------------------------------------------------


def test_it_names_a_missing_required_column():
    errors = errors_of(parse_prompts, b"id,question\na,x\n", "p.csv")
    assert [str(e) for e in errors] == [
        "line 1, field 'prompt': required column is missing (columns found: 'id', 'question')"
    ]


def test_it_rejects_a_column_named_twice():
    [error] = errors_of(parse_prompts, b"id,prompt,ID\na,x,y\n", "p.csv")
    assert str(error) == "line 1, field 'id': appears twice in the header"


def test_it_reports_the_byte_offset_and_line_of_bytes_that_are_not_utf8():
    data = b"id,prompt\na,caf\xe9\n"
    [error] = errors_of(parse_prompts, data, "p.csv")
    assert error.line == 2
    assert "not UTF-8" in error.message
    assert "byte 0xe9 at byte offset 15" in error.message
    [error] = errors_of(parse_prompts, b"\xef\xbb\xbf" + data, "p.csv")
    assert "byte offset 18" in error.message


def test_it_refuses_utf16_with_advice():
    data = "id,prompt\na,x\n".encode("utf-16")
    [error] = errors_of(parse_prompts, data, "p.csv")
    assert "UTF-16" in error.message


@pytest.mark.parametrize("data", [b"", b"  \n\r\n", b"\xef\xbb\xbf"])
def test_it_refuses_an_empty_file(data):
    [error] = errors_of(parse_prompts, data, "p.csv")
    assert str(error) == "the file is empty"


@pytest.mark.parametrize(
    "data, filename", [(b"id,prompt\n\n", "p.csv"), (b"[]", "p.json"), (b"\n\n", "p.jsonl")]
)
def test_it_refuses_a_file_without_rows(data, filename):
    with pytest.raises(UploadError, match="the file (is empty|has no prompts)"):
        parse_prompts(data, filename)


def test_it_refuses_a_file_over_the_size_limit():
    data = b"id,prompt\n" + b"a,x\n" * 10
    with pytest.raises(UploadError, match="the file is 0.0 MB; the limit is 0.0 MB"):
        parse_prompts(data, "p.csv", max_bytes=20)
    assert len(parse_prompts(b"id,prompt\na,x\n", "p.csv", max_bytes=None).rows) == 1


def test_it_refuses_spreadsheets_by_their_extension():
    with pytest.raises(UploadError, match=r"\.xlsx files are not supported"):
        parse_prompts(b"PK\x03\x04\x14\x00", "prompts.xlsx")


def test_it_says_so_when_it_cannot_tell_the_format():
    with pytest.raises(UploadError, match="cannot tell the format of 'notes.txt'"):
        parse_prompts(b"just some words\n", "notes.txt")


def test_errors_print_their_location_and_survive_pickling():
    assert str(RowError(7, "prompt", "is empty")) == "line 7, field 'prompt': is empty"
    assert str(RowError(3, None, "bad", index=2)) == "line 3 (index 2): bad"
    assert str(RowError(None, None, "the file is empty")) == "the file is empty"
    error = UploadError([RowError(1, "id", "is empty")] * 2, total=5)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errors, copy.total, str(copy)) == (error.errors, 5, str(error))
    assert isinstance(UploadError("x"), ValueError)


# --- imported outputs ------------------------------------------------------------------


def test_it_reads_imported_outputs_with_every_field():
    data = jsonl(
        {
            "prompt_id": "a",
            "output": "  Hello  ",
            "latency_ms": 12.5,
            "cost": 0,
            "prompt_tokens": 10,
            "completion_tokens": 3.0,
            "sample_index": 1,
        },
        {"prompt_id": "a", "output": "Hi"},
    )
    parsed = parse_imported_outputs(data, "o.jsonl", {"a"})
    first, second = parsed.rows
    assert first.text == "  Hello  "
    assert (first.sample_index, first.latency_ms, first.cost) == (1, 12.5, 0.0)
    assert (first.prompt_tokens, first.completion_tokens, first.line) == (10, 3, 1)
    assert (second.sample_index, second.latency_ms, second.cost, second.prompt_tokens) == (
        0,
        None,
        None,
        None,
    )


def test_it_reads_imported_outputs_from_csv_with_blank_optional_cells():
    data = b"prompt_id,output,latency_ms,cost,sample_index\na,Hello,,0.25,\nb,Bye, 1e3 ,,2\n"
    rows = parse_imported_outputs(data, "o.csv").rows
    assert [(r.prompt_id, r.latency_ms, r.cost, r.sample_index) for r in rows] == [
        ("a", None, 0.25, 0),
        ("b", 1000.0, None, 2),
    ]


def test_it_rejects_an_output_for_an_unknown_prompt_id():
    data = jsonl({"prompt_id": "a", "output": "x"}, {"prompt_id": "zz", "output": "y"})
    [error] = errors_of(parse_imported_outputs, data, "o.jsonl", {"a", "b"})
    assert str(error) == "line 2, field 'prompt_id': unknown prompt id 'zz'"
    assert len(parse_imported_outputs(data, "o.jsonl").rows) == 2


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("latency_ms", -1, "must not be negative, not -1"),
        ("latency_ms", "fast", "must be a number, not 'fast'"),
        ("cost", float("nan"), "must be a number, not nan"),
        ("cost", True, "must be a number, not true/false"),
        ("prompt_tokens", 1.5, "must be a whole number, not 1.5"),
        ("completion_tokens", -2, "must not be negative, not -2"),
        ("sample_index", [0], "must be a whole number, not a list"),
        ("output", "", "is empty"),
        ("output", 3, "must be a string, not a number"),
    ],
)
def test_it_rejects_bad_output_fields(field, value, message):
    row = {"prompt_id": "a", "output": "x", field: value}
    [error] = errors_of(parse_imported_outputs, jsonl(row), "o.jsonl")
    assert (error.line, error.field, error.message) == (1, field, message)


def test_it_names_both_lines_of_a_duplicate_output():
    data = jsonl(
        {"prompt_id": "a", "output": "x"},
        {"prompt_id": "a", "output": "y", "sample_index": 1},
        {"prompt_id": "a", "output": "z", "sample_index": 0},
    )
    [error] = errors_of(parse_imported_outputs, data, "o.jsonl")
    assert str(error) == (
        "line 3, field 'prompt_id': duplicate output for prompt 'a', sample 0 (first on line 1)"
    )


def test_imported_outputs_need_their_required_columns():
    errors = errors_of(parse_imported_outputs, b"prompt,response\na,b\n", "o.csv")
    assert [e.field for e in errors] == ["prompt_id", "output"]


# --- battles ---------------------------------------------------------------------------

ARENA_ROWS = [
    {
        "question_id": "q1",
        "model_a": "alpha",
        "model_b": "beta",
        "winner": "model_a",
        "judge": "arena_user_1",
        "turn": 1,
        "anony": True,
        "language": "English",
        "tstamp": 1700000000.0,
        "conv_metadata": {"sum_user_tokens": 12},
    },
    {
        "question_id": "q2",
        "model_a": "beta",
        "model_b": "gamma",
        "winner": "tie (bothbad)",
        "judge": "arena_user_2",
        "turn": 2,
        "anony": False,
        "language": "German",
        "tstamp": 1700000100.0,
        "conv_metadata": {"sum_user_tokens": 40},
    },
    {"question_id": "q3", "model_a": "gamma", "model_b": "alpha", "winner": "tie"},
]
EXPECTED = (
    ["alpha", "beta", "gamma"],
    ["beta", "gamma", "alpha"],
    ["model_a", "tie (bothbad)", "tie"],
)


def test_it_reads_arenas_public_battle_json_list():
    battles = parse_battles(json.dumps(ARENA_ROWS, indent=4).encode(), "clean_battle.json")
    assert (battles.model_a, battles.model_b, battles.winner) == EXPECTED
    assert len(battles) == 3
    assert battles.line == [2, 16, 30]


def test_it_reads_battles_from_json_lines():
    battles = parse_battles(jsonl(*ARENA_ROWS), "battles.jsonl")
    assert (battles.model_a, battles.model_b, battles.winner, battles.line) == (
        *EXPECTED,
        [1, 2, 3],
    )


def test_it_reads_battles_from_csv():
    data = (
        b"model_a,model_b,winner,judge\n"
        b"alpha,beta,model_a,x\n"
        b"beta,gamma,tie (bothbad),y\n"
        b"gamma,alpha,tie,z\n"
    )
    battles = parse_battles(data, "battles.csv")
    assert (battles.model_a, battles.model_b, battles.winner, battles.line) == (
        *EXPECTED,
        [2, 3, 4],
    )


def test_it_strips_model_names_and_shares_one_string_per_name():
    rows = [
        {"model_a": " alpha ", "model_b": "beta", "winner": "tie"},
        {"model_a": "beta", "model_b": "".join(["al", "pha"]), "winner": "model_b"},
    ]
    battles = parse_battles(jsonl(*rows), "b.jsonl")
    assert battles.model_a == ["alpha", "beta"]
    assert battles.model_a[0] is battles.model_b[1]


def test_it_names_the_line_of_a_bad_winner():
    rows = [*ARENA_ROWS, {"model_a": "a", "model_b": "b", "winner": "draw"}]
    [error] = errors_of(parse_battles, jsonl(*rows), "b.jsonl")
    allowed = ", ".join(repr(w) for w in BATTLE_WINNERS)
    assert str(error) == f"line 4, field 'winner': must be one of {allowed}, not 'draw'"


def test_it_names_the_element_and_line_of_a_bad_battle_in_a_json_list():
    rows = [ARENA_ROWS[0], {"model_a": "a", "model_b": "b", "winner": ["model_a"]}]
    [error] = errors_of(parse_battles, json.dumps(rows, indent=1).encode(), "b.json")
    assert (error.line, error.index, error.field) == (16, 1, "winner")
    assert error.message.endswith("not a list")


def test_it_rejects_a_battle_of_a_model_against_itself_and_missing_fields():
    data = b"model_a,model_b,winner\nalpha,alpha,tie\n,beta,model_a\nalpha,beta,model_b\n"
    errors = errors_of(parse_battles, data, "b.csv")
    assert [str(e) for e in errors] == [
        "line 2, field 'model_b': is the same model as model_a ('alpha')",
        "line 3, field 'model_a': is empty",
    ]
    errors = errors_of(parse_battles, jsonl({"model_a": "a", "model_b": 3}), "b.jsonl")
    assert [(e.field, e.message) for e in errors] == [
        ("model_b", "must be a string, not a number"),
        ("winner", "is missing"),
    ]


def test_battle_csv_needs_its_columns():
    errors = errors_of(parse_battles, b"model_a,model_b,result\na,b,tie\n", "b.csv")
    assert [e.field for e in errors] == ["winner"]


def test_it_parses_many_battles_with_one_entry_per_row():
    rows = "\n".join(
        json.dumps(
            {"model_a": f"m{i % 7}", "model_b": f"m{(i + 1) % 7}", "winner": BATTLE_WINNERS[i % 4]}
        )
        for i in range(20_000)
    )
    battles = parse_battles(rows.encode(), "b.jsonl", max_bytes=None)
    assert len(battles) == 20_000
    assert len(set(map(id, battles.model_a))) == 7
    assert battles.line[-1] == 20_000



# Every kind of valid battle row: padded names that strip to a name seen before, escapes,
# non-ASCII and U+2028 (JSON allows it raw in strings; JSON Lines split on "\n" only),
# a name that looks like a number, keys in any order, extra fields of every JSON type
# (one even holds "model_a" and "winner" keys of its own), and every winner.
VALID_BATTLES = [
    {"model_a": "alpha", "model_b": "beta", "winner": "model_a"},
    {"model_a": "  beta\t", "model_b": " gamma ", "winner": "model_b"},
    {
        "question_id": "q3",
        "model_a": "gamma",
        "model_b": "alpha",
        "winner": "tie",
        "turn": 2,
        "anony": False,
        "tstamp": 1.5,
        "judge": None,
        "conv_metadata": {"model_a": "x", "nested": [1, {"winner": "no"}]},
        "tags": ["a", "b"],
    },
    {"winner": "tie (bothbad)", "model_b": "alpha", "model_a": "delta"},
    {"model_a": 'modèle-β "🚀" \\ back', "model_b": "line\u2028separator", "winner": "model_a"},
    {"model_a": "123", "model_b": "alpha", "winner": "model_b"},
    {"model_a": "delta", "model_b": "123", "winner": "tie"},
]
VALID_BATTLE_FILES = {
    "indented JSON list": (json.dumps(VALID_BATTLES, indent=2, ensure_ascii=False), "b.json"),
    "one-line JSON list": (json.dumps(VALID_BATTLES), "b.json"),
    "JSON list with whitespace around": ("\n " + json.dumps(VALID_BATTLES) + " \n\n", "b.json"),
    "JSON Lines": (
        "\n".join(json.dumps(b, ensure_ascii=False) for b in VALID_BATTLES) + "\n",
        "b.jsonl",
    ),
    "JSON Lines with CRLF": (
        "\r\n".join(json.dumps(b) for b in VALID_BATTLES) + "\r\n",
        "b.ndjson",
    ),
    "JSON Lines in a .json file": ("\n".join(json.dumps(b) for b in VALID_BATTLES), "b.json"),
    "CSV": (
        " Winner ,judge,MODEL_B,model_a,\n"
        "model_a,x,beta,alpha,\n"
        "model_b,,  gamma , beta,\n"
        "tie,y,alpha,gamma,\n"
        "tie (bothbad),z,alpha,delta,\n"
        "model_a,,line\u2028separator,modèle-β 🚀,\n"
        "model_b,,alpha,123,\n",
        "b.csv",
    ),
    "CSV with CRLF and no final newline": (
        "model_a,model_b,winner\r\n"
        "alpha,beta,model_a\r\n"
        " beta ,gamma,tie\r\n"
        "123,alpha,tie (bothbad)",
        "b.csv",
    ),
    "TSV": ("model_a\tmodel_b\twinner\nalpha, v2\tbeta\ttie\nbeta\talpha, v2\tmodel_b\n", "b.tsv"),
}


_COLUMN_READERS = ("_json_list_battle_columns", "_json_lines_battle_columns", "_csv_battle_columns")


def _parse_row_by_row(monkeypatch, data: bytes, filename: str):
    with monkeypatch.context() as patch:
        for reader in _COLUMN_READERS:
            patch.setattr(uploads, reader, lambda source: None)
        return parse_battles(data, filename)


def _parse_column_by_column(monkeypatch, data: bytes, filename: str):
    def row_by_row(source):
        raise AssertionError("the file went to the row-by-row reader")

    with monkeypatch.context() as patch:
        patch.setattr(uploads, "_parse_battle_rows", row_by_row)
        return parse_battles(data, filename)


@pytest.mark.parametrize("kind", VALID_BATTLE_FILES)
def test_the_column_reader_and_the_row_reader_give_the_same_battles(kind, monkeypatch):
    text, filename = VALID_BATTLE_FILES[kind]
    fast = _parse_column_by_column(monkeypatch, text.encode(), filename)
    slow = _parse_row_by_row(monkeypatch, text.encode(), filename)
    assert fast == slow
    assert (fast.model_a, fast.model_b, fast.winner, fast.line) == (
        slow.model_a,
        slow.model_b,
        slow.winner,
        slow.line,
    )
    assert fast.models == slow.models
    assert [fast.models[k] for k in fast.a] == fast.model_a
    assert [fast.winners[k] for k in fast.winner_code] == fast.winner
    assert all(name == name.strip() for name in fast.models)
    assert len(set(fast.models)) == len(fast.models)


def test_the_column_reader_strips_and_merges_names_as_the_row_reader_does(monkeypatch):
    text, filename = VALID_BATTLE_FILES["indented JSON list"]
    battles = _parse_column_by_column(monkeypatch, text.encode(), filename)
    # First appearances in the model_a column, then in the model_b column.
    assert battles.models == (
        "alpha", "beta", "gamma", "delta", 'modèle-β "🚀" \\ back', "123", "line\u2028separator"
    )
    assert battles.model_a[:2] == ["alpha", "beta"]
    assert battles.model_b[1] == "gamma"
    assert battles.winner == [b["winner"] for b in VALID_BATTLES]
    # json.dumps(indent=2) opens each element of the list with a line of its own: "  {".
    assert battles.line == [n for n, line in enumerate(text.split("\n"), 1) if line == "  {"]
    assert battles.model_a[1] is battles.model_b[0]


_AB = '{"model_a": "a", "model_b": "b", "winner": "tie"}'
_BA = '{"model_a": "b", "model_b": "a", "winner": "tie"}'


@pytest.mark.parametrize(
    ("text", "filename", "lines"),
    [
        (f"\n{_AB}\n\n  {_BA}", "b.jsonl", [2, 4]),  # blank lines, leading whitespace
        (f"{_AB} \n{_BA}", "b.jsonl", [1, 2]),  # whitespace after the value
        ('model_a,model_b,winner\n"a\nstill a",b,tie\n\n ,\nb,a,tie\n', "b.csv", [2, 6]),
        ("\nmodel_a,model_b,winner\na,b,tie\n", "b.csv", [3]),
        ("model_a,model_b,winner\ra,b,tie\rb,a,tie\r", "b.csv", [2, 3]),  # old Mac line ends
        ("model_a,model_b,winner\r\na,b,tie\rb,a,tie\r\n", "b.csv", [2, 3]),
        ("model_a,model_b,winner,note\na,b,tie\nb,a,tie,x\n", "b.csv", [2, 3]),
    ],
)
def test_valid_files_the_column_reader_cannot_split_still_parse_row_by_row(text, filename, lines):
    assert parse_battles(text.encode(), filename).line == lines


def _big_battle_file(fmt: str, bad: dict[int, dict]) -> tuple[bytes, str]:
    """60,000 battles, one per line, as a JSON list ("[" on line 1), JSON Lines or CSV
    (header on line 1), with the rows in ``bad`` (keyed by line) put in."""
    first = {"json": 2, "jsonl": 1, "csv": 2}[fmt]
    rows = [
        bad.get(
            first + i,
            {"model_a": f"m{i % 7}", "model_b": f"m{(i + 1) % 7}", "winner": BATTLE_WINNERS[i % 3]},
        )
        for i in range(60_000)
    ]
    if fmt == "json":
        return ("[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n").encode(), "big.json"
    if fmt == "jsonl":
        return ("\n".join(map(json.dumps, rows)) + "\n").encode(), "big.jsonl"
    body = "\n".join(f"{r['model_a']},{r['model_b']},{r['winner']}" for r in rows)
    return ("model_a,model_b,winner\n" + body + "\n").encode(), "big.csv"


_ALLOWED = ", ".join(repr(w) for w in BATTLE_WINNERS)
BAD_BATTLES = {
    "unknown winner": (
        {"model_a": "m1", "model_b": "m2", "winner": "draw"},
        f", field 'winner': must be one of {_ALLOWED}, not 'draw'",
    ),
    "model against itself": (
        {"model_a": "m3", "model_b": " m3", "winner": "tie"},
        ", field 'model_b': is the same model as model_a ('m3')",
    ),
    "empty model": (
        {"model_a": " ", "model_b": "m2", "winner": "tie"},
        ", field 'model_a': is empty",
    ),
    "model not a string": (
        {"model_a": "m1", "model_b": 7, "winner": "tie"},
        ", field 'model_b': must be a string, not a number",
    ),
    "winner missing": ({"model_a": "m1", "model_b": "m2"}, ", field 'winner': is missing"),
    "winner not a string": (
        {"model_a": "m1", "model_b": "m2", "winner": ["tie"]},
        f", field 'winner': must be one of {_ALLOWED}, not a list",
    ),
    "not an object": (["m1", "m2", "tie"], ": is not a JSON object (found a list)"),
}
_CSV_BAD_BATTLES = ("unknown winner", "model against itself", "empty model")


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [(fmt, kind) for fmt in ("json", "jsonl") for kind in BAD_BATTLES]
    + [("csv", kind) for kind in _CSV_BAD_BATTLES],
)
def test_one_bad_battle_deep_in_a_big_file_is_named_by_line_and_field(fmt, kind):
    row, message = BAD_BATTLES[kind]
    data, filename = _big_battle_file(fmt, {50_000: row})
    [error] = errors_of(parse_battles, data, filename, max_bytes=None)
    where = "line 50000 (index 49998)" if fmt == "json" else "line 50000"
    assert str(error) == where + message


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_every_bad_battle_in_a_big_file_is_named_in_file_order(fmt):
    bad = {
        50_000: {"model_a": "m1", "model_b": "m2", "winner": "draw"},
        59_000: {"model_a": "m3", "model_b": " m3", "winner": "tie"},
        59_999: {"model_a": "", "model_b": "m2", "winner": "tie"},
    }
    data, filename = _big_battle_file(fmt, bad)
    with pytest.raises(UploadError) as info:
        parse_battles(data, filename, max_bytes=None)
    where = {
        "json": [
            "line 50000 (index 49998)",
            "line 59000 (index 58998)",
            "line 59999 (index 59997)",
        ],
        "jsonl": ["line 50000", "line 59000", "line 59999"],
        "csv": ["line 50000", "line 59000", "line 59999"],
    }[fmt]
    assert str(info.value) == "\n".join(
        [
            f"{where[0]}, field 'winner': must be one of {_ALLOWED}, not 'draw'",
            f"{where[1]}, field 'model_b': is the same model as model_a ('m3')",
            f"{where[2]}, field 'model_a': is empty",
        ]
    )
    assert [(e.line, e.field) for e in info.value.errors] == [
        (50_000, "winner"),
        (59_000, "model_b"),
        (59_999, "model_a"),
    ]


def test_a_big_json_list_with_many_bad_battles_reports_the_first_ones_and_counts_the_rest():
    bad = {
        line: {"model_a": "m1", "model_b": 7, "winner": "tie"}
        for line in range(1_000, 61_000, 1_000)
    }
    data, filename = _big_battle_file("json", bad)
    with pytest.raises(UploadError) as info:
        parse_battles(data, filename, max_bytes=None)
    assert info.value.total == 60
    assert len(info.value.errors) == MAX_REPORTED_ERRORS
    assert str(info.value.errors[0]) == (
        "line 1000 (index 998), field 'model_b': must be a string, not a number"
    )
    assert str(info.value).endswith(f"…and {60 - MAX_REPORTED_ERRORS} more")


def test_a_big_clean_file_is_read_column_by_column_with_its_lines(monkeypatch):
    data, filename = _big_battle_file("json", {})
    battles = _parse_column_by_column(monkeypatch, data, filename)
    assert len(battles) == 60_000
    assert battles.models == tuple(f"m{k}" for k in (0, 1, 2, 3, 4, 5, 6))
    assert battles.line[:2] == [2, 3] and battles.line[-1] == 60_001
    assert battles.winner[:3] == list(BATTLE_WINNERS[:3])


# --- what no database can store, and numbers beyond their columns ----------------------


@pytest.mark.parametrize(
    "data, filename, expected",
    [
        (
            b"id,prompt\nq1,He\x00llo\n",
            "p.csv",
            "line 2, field 'prompt': contains a NUL character (\\x00) at character 3, "
            "which cannot be stored",
        ),
        (b'{"id": "q\\u0000", "prompt": "x"}', "p.jsonl", "line 1, field 'id': contains a NUL"),
        (
            b'{"id": "q1", "prompt": "x", "reference": "ok\\ud800"}',
            "p.jsonl",
            "line 1, field 'reference': contains a lone surrogate (\\ud800) at character 3",
        ),
        (
            b'[{"id": "q1", "prompt": "x", "tags": ["fine", "\\udc00"]}]',
            "p.json",
            "line 1 (index 0), field 'tags': tag '\\udc00'… contains a lone surrogate",
        ),
        (
            b'{"id": "q1", "prompt": "x", "gold_answer": "\\u0000"}',
            "p.jsonl",
            "line 1, field 'gold_answer': contains a NUL",
        ),
        (
            jsonl({"id": "q1", "prompt": "x", "image": "i" * 501}),
            "p.jsonl",
            "line 1, field 'image': is 501 characters long; the limit is 500",
        ),
    ],
)
def test_it_refuses_prompt_text_no_database_can_store(data, filename, expected):
    [error] = errors_of(parse_prompts, data, filename)
    assert str(error).startswith(expected)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sample_index", 40_000, "must be at most 32767, not 40000"),
        ("prompt_tokens", 3e9, "must be at most 2147483647, not 3000000000.0"),
        ("completion_tokens", 3_000_000_000, "must be at most 2147483647, not 3000000000"),
        ("latency_ms", 1e11, "must be at most 1e+10, not 100000000000.0"),
        ("cost", 1e300, "must be at most 1e+09, not 1e+300"),
        ("output", "a\x00", "contains a NUL character (\\x00) at character 2, which cannot be"),
        ("prompt_id", "\ud800", "contains a lone surrogate (\\ud800) at character 1"),
    ],
)
def test_it_refuses_output_values_beyond_their_columns(field, value, message):
    row = {"prompt_id": "a", "output": "x", field: value}
    [error] = errors_of(parse_imported_outputs, jsonl(row), "o.jsonl")
    assert (error.line, error.field) == (1, field)
    assert error.message.startswith(message)


def test_numbers_at_their_columns_limits_are_kept():
    row = {"prompt_id": "a", "output": "x", "sample_index": 32767, "prompt_tokens": 2**31 - 1}
    [parsed] = parse_imported_outputs(jsonl(row), "o.jsonl").rows
    assert (parsed.sample_index, parsed.prompt_tokens) == (32767, 2**31 - 1)


def test_a_json_line_nested_too_deep_is_refused_before_it_is_parsed():
    deep = "[" * 100_000 + "]" * 100_000
    data = f'{{"id": "a", "prompt": "x"}}\n{deep}\n{{"id": "b", "prompt": "{"[" * 50}"}}\n'
    [error] = errors_of(parse_prompts, data.encode(), "p.jsonl")
    assert str(error) == "line 2: is nested more than 32 levels deep"


# --- reading as a stream -----------------------------------------------------------------


class Unread(io.BytesIO):
    """A file that says its size and must not be read."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def read(self, *args):
        raise AssertionError("read")


def test_a_file_object_over_the_limit_is_refused_from_its_size_unread():
    with pytest.raises(UploadError, match=r"^the file is 2048\.0 MB; the limit is 50\.0 MB$"):
        parse_prompts(Unread(2 * 1024**3), "p.csv")


def test_a_file_object_is_read_from_its_start_in_bounded_chunks():
    data = b"id,prompt\n" + b"".join(b"p%d,Prompt %d\n" % (i, i) for i in range(5_000))
    reads = []

    class Recording(io.BytesIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    fh = Recording(data)
    fh.seek(0, io.SEEK_END)  # wherever it stands, the parser starts at the beginning
    rows = parse_prompts(fh, "p.csv").rows
    assert [r.external_id for r in rows] == [f"p{i}" for i in range(5_000)]
    assert reads and all(0 < n <= uploads._READ_BYTES for n in reads)


SAMPLES = [
    (
        "p.csv",
        'id,prompt,reference,tags\r\né1,"Grüße,\nzwei Zeilen",Ref ü,a;ß\n\né2,日本語,,x\rlone,cr\n',
    ),
    (
        "p.jsonl",
        '{"id": "a", "prompt": "日本\u2028語"}\n\n  {"id": "b", "prompt": "x", "tags": ["é"]}\r\n',
    ),
    (
        "p.json",
        '[\n  {"id": "a", "prompt": "Grüße"},\n  {"id": "b", "prompt": "ü", "tags": "x;y"}]\n',
    ),
    (
        "p.csv",
        "id,prompt,reference,tags\r\n"
        'é1,"Grüße,\nzwei Zeilen",Ref ü,a;ß\n\n'
        "é2,日本語のプロンプト,,x\rlone,cr,row\n"
        "é3,,missing prompt,\n",
    ),
    (
        "p.jsonl",
        '{"id": "a", "prompt": "日本\u2028語"}\n\n  {"id": "b", "prompt": "x", "tags": ["é", "é"]}\r\n'
        '{"id": "c", "prompt": ""}\n{"id": "d", "prompt": "y",}\n',
    ),
    (
        "p.json",
        '[\n  {"id": "a", "prompt": "Grüße"},\n  {"id": "b", "prompt": "ü", "tags": "x;y"}, '
        '{"id": "c", "prompt": 12345678901234567890}, {"id": "d", "prompt": "ok"}\n]\n\n',
    ),
    ("p.json", '[{"id": "a", "prompt": "x"}, {"id": "b" "prompt": "y"}]'),
    ("p.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b\\u0000", "prompt": "ok \\ud800"}\n'),
    ("p.csv", "id,prompt\nq1,fine\nq2,nul \x00 here\n"),
    ("p.json", '[{"id": "a", "prompt": "x"}]\n  trailing'),
    ("p.csv", "id,prompt\nq1,caf\xe9 ok\nq2,bad \udc80 byte\n"),
]


def _outcome(data: bytes, filename: str):
    try:
        return parse_prompts(data, filename)
    except UploadError as exc:
        return [str(e) for e in exc.errors]


@pytest.mark.parametrize("filename, text", SAMPLES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_chunk_boundaries_anywhere_give_the_same_rows_and_errors(
    monkeypatch, filename, text, chunk
):
    data = ("\ufeff" + text).encode("utf-8", "surrogateescape")
    expected = _outcome(data, filename)
    monkeypatch.setattr(uploads, "_READ_BYTES", chunk)
    assert _outcome(io.BytesIO(data), filename) == expected
    assert _outcome(data, filename) == expected


def test_bytes_that_are_not_utf8_deep_in_a_file_name_their_line_column_and_offset(monkeypatch):
    monkeypatch.setattr(uploads, "_READ_BYTES", 7)
    data = "id,prompt\nq1,Grüße\nq2,ab\n".encode() + b"q3,xy\xffz\n"
    [error] = errors_of(parse_prompts, io.BytesIO(data), "p.csv")
    offset = data.index(b"\xff")
    assert error.line == 4
    assert error.message == (
        f"the file is not UTF-8: byte 0xff at byte offset {offset} (column 6) "
        "cannot be decoded; save the file as UTF-8"
    )


# --- demo data -------------------------------------------------------------------------


def test_the_demo_prompts_parse_with_unique_ids_and_references():
    parsed = parse_prompts((DEMO / "support_prompts.csv").read_bytes(), "support_prompts.csv")
    rows = parsed.rows
    assert len(rows) == 40
    assert parsed.warnings == ()
    assert len({r.external_id for r in rows}) == 40
    assert all(r.external_id.startswith("cs-") for r in rows)
    assert len({r.reference for r in rows}) == 40
    assert all(r.reference for r in rows)
    topics = {"billing", "shipping", "returns", "account", "orders", "product"}
    for row in rows:
        assert len({"easy", "hard"} & set(row.tags)) == 1, row.external_id
        assert set(row.tags) - {"easy", "hard"} <= topics, row.external_id
        assert set(row.tags) & topics, row.external_id


def test_the_demo_imported_outputs_cover_every_prompt_once():
    prompts = parse_prompts((DEMO / "support_prompts.csv").read_bytes(), "support_prompts.csv")
    ids = {r.external_id for r in prompts.rows}
    parsed = parse_imported_outputs(
        (DEMO / "imported_outputs.jsonl").read_bytes(), "imported_outputs.jsonl", ids
    )
    assert parsed.warnings == ()
    assert sorted(r.prompt_id for r in parsed.rows) == sorted(ids)
    assert all(r.latency_ms is not None and r.cost is not None for r in parsed.rows)
    references = {r.external_id: r.reference for r in prompts.rows}
    assert all(r.text != references[r.prompt_id] for r in parsed.rows)


def test_the_demo_bad_prompts_file_reports_each_deliberate_mistake():
    errors = errors_of(parse_prompts, (DEMO / "bad_prompts.csv").read_bytes(), "bad_prompts.csv")
    assert [str(e) for e in errors] == [
        "line 3, field 'prompt': is empty",
        "line 4, field 'id': is empty",
        "line 5, field 'id': duplicate id 'cs-101' (first on line 2)",
        "line 8: has 5 values but the header has 4 columns",
    ]


# --- purity ----------------------------------------------------------------------------


def test_the_module_imports_without_django():
    code = "import sys, annotation.uploads; assert 'django' not in sys.modules, 'django imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
