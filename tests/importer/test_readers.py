"""Reading test-set files: formats, their quirks, line numbers and field mapping.

Most tests write a small file into tmp_path; the last ones read the public
datasets in the shared folder beside the repository, which are never copied in.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from app.importer import readers
from app.importer.readers import (
    FieldMapping,
    FieldOptions,
    ImportFileError,
    choose_mapping,
    guess_format,
    read_records,
    read_test_cases,
    to_test_case,
)

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
needs_datasets = pytest.mark.skipif(
    not DATASETS.is_dir(),
    reason=f"the public datasets are not at {DATASETS} (a checkout without "
    "the shared folder beside it)")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def records(path: Path, file_format: str, **kwargs) -> list[tuple[int, dict]]:
    return list(read_records(path, file_format, **kwargs))


def error_of(path: Path, file_format: str, **kwargs) -> ImportFileError:
    with pytest.raises(ImportFileError) as caught:
        records(path, file_format, **kwargs)
    return caught.value


# --- formats -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("cases.jsonl", "jsonl"), ("cases.NDJSON", "jsonl"), ("cases.json", "json"),
    ("cases.csv", "csv"), ("cases.tsv", "tsv"), ("cases.tab", "tsv"),
])
def test_the_format_is_guessed_from_the_extension(name, expected):
    assert guess_format(name) == expected


def test_an_unknown_extension_is_an_error_that_suggests_format():
    with pytest.raises(ImportFileError) as caught:
        guess_format("cases.txt")

    assert str(caught.value).startswith("cases.txt: ")
    assert "'.txt'" in str(caught.value)
    assert "--format" in str(caught.value)


def test_only_csv_and_tsv_can_be_read_without_a_header(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"a": 1}\n')

    error = error_of(path, "jsonl", has_header=False)

    assert "header" in error.message


# --- JSON Lines --------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_counts_them_in_line_numbers(tmp_path):
    path = write(tmp_path, "cases.jsonl",
                 '{"q": "one"}\n\n   \n{"q": "two"}\n{"q": "three"}')

    assert records(path, "jsonl") == [
        (1, {"q": "one"}), (4, {"q": "two"}), (5, {"q": "three"})]


def test_jsonl_with_a_byte_order_mark_and_crlf_reads_clean_keys(tmp_path):
    path = write(tmp_path, "cases.jsonl",
                 b'\xef\xbb\xbf{"q": "one"}\r\n{"q": "two"}\r\n')

    assert records(path, "jsonl") == [(1, {"q": "one"}), (2, {"q": "two"})]


def test_jsonl_invalid_json_names_its_line_and_column(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"q": 1}\n\n{"q": 2,}\n{"q": 3}\n')

    error = error_of(path, "jsonl")

    assert error.line == 3
    assert str(error).startswith(f"{path}:3: invalid JSON: ")
    assert "column 9" in error.message


def test_jsonl_record_that_is_not_an_object_is_an_error(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"q": 1}\n["q", 2]\n')

    error = error_of(path, "jsonl")

    assert (error.line, error.message) == (
        2, "the record is a JSON array, not an object")


def test_jsonl_invalid_utf8_names_its_line(tmp_path):
    path = write(tmp_path, "cases.jsonl", b'{"q": "ok"}\n{"q": "caf\xe9"}\n')

    error = error_of(path, "jsonl")

    assert error.line == 2
    assert "invalid UTF-8" in error.message
    assert "0xe9" in error.message


def test_jsonl_is_streamed_so_good_records_come_before_a_later_error(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"q": 1}\n{"q": 2}\nnot json\n')
    stream = read_records(path, "jsonl")

    assert next(stream) == (1, {"q": 1})
    assert next(stream) == (2, {"q": 2})
    with pytest.raises(ImportFileError):
        next(stream)


# --- JSON arrays -------------------------------------------------------------


def test_json_array_gives_each_record_the_line_where_it_starts(tmp_path):
    path = write(tmp_path, "cases.json",
                 '[\n  {"q": "one",\n   "a": 1},\n  {"q": "two"}, {"q": "3"}\n]\n')

    assert records(path, "json") == [
        (2, {"q": "one", "a": 1}), (4, {"q": "two"}), (4, {"q": "3"})]


def test_json_array_read_in_chunks_smaller_than_a_record(tmp_path, monkeypatch):
    values = [{"q": f"question {n} \u00e9\u2019", "n": n * 1.5e3, "ok": n % 2 == 0,
               "none": None, "esc": "tab\there \\u"} for n in range(40)]
    path = write(tmp_path, "cases.json", json.dumps(values, indent=1))
    monkeypatch.setattr(readers, "_JSON_CHUNK_BYTES", 3)

    got = records(path, "json")

    assert [record for _, record in got] == values
    assert got[1][0] == 2 + 7  # `[` line, then 7 lines per indented record


def test_empty_json_array_has_no_records(tmp_path):
    path = write(tmp_path, "cases.json", b"\xef\xbb\xbf [ \r\n ] \n")

    assert records(path, "json") == []


def test_json_array_bad_element_names_the_line_where_it_starts(tmp_path):
    path = write(tmp_path, "cases.json",
                 '[\n {"q": 1},\n {"q": 2,\n  "a": tru}\n]\n')

    error = error_of(path, "json")

    assert error.line == 3
    assert "invalid JSON" in error.message
    assert "(line 4)" in error.message


def test_json_array_element_that_is_not_an_object_is_an_error(tmp_path):
    path = write(tmp_path, "cases.json", '[{"q": 1},\n "just text"]')

    error = error_of(path, "json")

    assert (error.line, error.message) == (
        2, "the record is a JSON string, not an object")


@pytest.mark.parametrize(("content", "line", "words"), [
    ('{"q": 1}', 1, "expected a JSON array"),
    ('[{"q": 1},\n]', 2, "trailing comma"),
    ('[{"q": 1}\n{"q": 2}]', 2, "expected ',' or ']'"),
    ('[{"q": 1},\n{"q": 2}', 2, "ends before the array is closed"),
    ('[{"q": 1}]\n[]', 2, "after the array"),
    ('[\n{"q": "never closed', 2, "Unterminated string"),
])
def test_json_array_structure_errors_name_their_line(tmp_path, content, line, words):
    path = write(tmp_path, "cases.json", content)

    error = error_of(path, "json")

    assert error.line == line
    assert words in error.message


def test_json_array_invalid_utf8_names_its_line(tmp_path, monkeypatch):
    path = write(tmp_path, "cases.json", b'[\n{"q": "ok"},\n{"q": "\xff"}]')
    monkeypatch.setattr(readers, "_JSON_CHUNK_BYTES", 4)

    error = error_of(path, "json")

    assert (error.line, error.message) == (3, "invalid UTF-8")


def test_json_array_is_streamed_so_good_records_come_before_an_error(tmp_path):
    path = write(tmp_path, "cases.json", '[{"q": 1},\n{"q": 2},\n{"q": oops}]')
    stream = read_records(path, "json")

    assert [next(stream), next(stream)] == [(1, {"q": 1}), (2, {"q": 2})]
    with pytest.raises(ImportFileError):
        next(stream)


# --- CSV ---------------------------------------------------------------------


def test_csv_with_bom_and_crlf_reads_clean_names_and_values(tmp_path):
    path = write(tmp_path, "cases.csv",
                 b"\xef\xbb\xbfquestion,answer\r\nTwo plus two?,4\r\n\r\nOne?,1\r\n")

    assert records(path, "csv") == [
        (2, {"question": "Two plus two?", "answer": "4"}),
        (4, {"question": "One?", "answer": "1"})]


def test_csv_quoted_cells_keep_newlines_commas_and_quotes(tmp_path):
    path = write(tmp_path, "cases.csv",
                 'text,label\r\n"\r\n\r\nWhere, exactly?",a\r\n'
                 '"She said ""hi""",b\r\n"two\nlines",c\r\n')

    assert records(path, "csv") == [
        (2, {"text": "\r\n\r\nWhere, exactly?", "label": "a"}),
        (5, {"text": 'She said "hi"', "label": "b"}),
        (6, {"text": "two\nlines", "label": "c"})]


@pytest.mark.parametrize(("bad_row", "num_cells"), [("x,y,z", 3), ("x", 1)])
def test_csv_ragged_row_names_the_line_where_it_starts(tmp_path, bad_row, num_cells):
    path = write(tmp_path, "cases.csv",
                 f'q,a\n"multi\nline\ncell",1\n{bad_row}\nlast,2\n')

    error = error_of(path, "csv")

    assert error.line == 5
    assert error.message == (
        f"the row has {num_cells} cells but the header has 2 columns")


def test_csv_ragged_row_that_starts_with_a_multiline_cell_names_its_start(tmp_path):
    path = write(tmp_path, "cases.csv", 'q,a\nok,1\n"multi\nline",1,extra\n')

    error = error_of(path, "csv")

    assert error.line == 3


def test_csv_unclosed_quote_is_an_error_at_the_row_where_it_opens(tmp_path):
    path = write(tmp_path, "cases.csv", 'q,a\nok,1\n"never closed,1\nmore,2\n')

    error = error_of(path, "csv")

    assert error.line == 3
    assert error.message.startswith("malformed CSV")


def test_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    path = write(tmp_path, "cases.csv", "q,a,q\n1,2,3\n")

    error = error_of(path, "csv")

    assert (error.line, error.message) == (1, "the header names the column 'q' twice")


def test_csv_unnamed_header_cell_is_named_by_its_position(tmp_path):
    path = write(tmp_path, "cases.csv", ",question\n0,Why?\n")

    assert records(path, "csv") == [(2, {"column1": "0", "question": "Why?"})]


def test_csv_invalid_utf8_names_its_line(tmp_path):
    path = write(tmp_path, "cases.csv", b"q,a\nok,1\n\xff\xfe,2\n")

    error = error_of(path, "csv")

    assert error.line == 3
    assert "invalid UTF-8" in error.message


def test_csv_without_header_names_columns_by_position(tmp_path):
    path = write(tmp_path, "cases.csv", "Two plus two?,4\nOne?,1\n")

    assert records(path, "csv", has_header=False) == [
        (1, {"column1": "Two plus two?", "column2": "4"}),
        (2, {"column1": "One?", "column2": "1"})]


def test_csv_whose_header_is_split_by_semicolons_is_read_with_semicolons(tmp_path):
    path = write(tmp_path, "cases.csv",
                 "\n\"Question; in full\";answer\nTwo plus two?;4\n\"1,5 + 1\";2,5\n")

    assert records(path, "csv") == [
        (3, {"Question; in full": "Two plus two?", "answer": "4"}),
        (4, {"Question; in full": "1,5 + 1", "answer": "2,5"})]


@pytest.mark.parametrize(("header", "delimiter"), [
    ("question;answer", ";"),
    ('"question, in full";answer', ";"),
    ("question,answer", ","),
    ('"question; in full",answer', ","),
    ("question;note,answer", ","),
    ("question", ","),
])
def test_the_csv_delimiter_is_semicolon_only_if_the_header_has_no_comma(
        tmp_path, header, delimiter):
    path = write(tmp_path, "cases.csv", f"{header}\nx\n")

    assert readers.detect_delimiter(path) == delimiter


def test_csv_without_header_is_read_with_commas_whatever_its_first_row(tmp_path):
    path = write(tmp_path, "cases.csv", "Why; and how?\nx,y\n")

    assert readers.detect_delimiter(path, has_header=False) == ","
    with pytest.raises(ImportFileError) as caught:
        records(path, "csv", has_header=False)
    assert caught.value.line == 2  # two cells, where the first row has one


def test_a_given_csv_delimiter_is_used_whatever_the_header(tmp_path):
    path = write(tmp_path, "cases.csv", "question;note|answer\na;b|1\n")

    assert records(path, "csv", delimiter="|") == [
        (2, {"question;note": "a;b", "answer": "1"})]


def test_a_delimiter_is_refused_for_formats_other_than_csv(tmp_path):
    path = write(tmp_path, "cases.tsv", "q\ta\n1\t2\n")

    error = error_of(path, "tsv", delimiter=";")

    assert "CSV" in error.message


# --- TSV ---------------------------------------------------------------------


def test_tsv_keeps_bare_quotes_inside_fields(tmp_path):
    path = write(tmp_path, "cases.tsv",
                 'q\ta\r\nIn the shop "All for a dollar", how many?\t250\r\n'
                 '"quoted start" and end"\t"x\r\n')

    assert records(path, "tsv") == [
        (2, {"q": 'In the shop "All for a dollar", how many?', "a": "250"}),
        (3, {"q": '"quoted start" and end"', "a": '"x'})]


def test_tsv_ragged_row_names_its_line(tmp_path):
    path = write(tmp_path, "cases.tsv", 'q\ta\none\t1\ntwo "quote\t2\textra\n')

    error = error_of(path, "tsv")

    assert (error.line, error.message) == (
        3, "the row has 3 cells but the header has 2 columns")


def test_tsv_without_header_checks_rows_against_the_first(tmp_path):
    path = write(tmp_path, "cases.tsv", "one\t1\ntwo\n")

    error = error_of(path, "tsv", has_header=False)

    assert (error.line, error.message) == (
        2, "the row has 1 cells but the first row has 2 columns")


# --- field mapping -----------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected_field"), [
    (["q", "answer", "expected", "expected_output"], "expected_output"),
    (["q", "answer", "expected"], "expected"),
    (["q", "answer"], "answer"),
    (["q", "reply"], None),
])
def test_default_expected_field_is_the_first_known_name(fields, expected_field):
    mapping = choose_mapping(dict.fromkeys(fields, "x"), FieldOptions())

    assert mapping.expected_field == expected_field
    assert not mapping.expected_required


def test_default_category_field_is_category_when_the_first_record_has_it():
    assert choose_mapping({"q": 1, "category": "a"}, FieldOptions()).category_field \
        == "category"
    assert choose_mapping({"q": 1, "topic": "a"}, FieldOptions()).category_field \
        is None


def test_a_field_named_as_input_is_not_chosen_as_expected_by_default():
    options = FieldOptions(input_fields=("q", "answer"))

    mapping = choose_mapping({"q": 1, "answer": 2, "expected": 3}, options)

    assert mapping.expected_field == "expected"


def test_default_input_is_every_other_field_with_json_values_kept():
    mapping = choose_mapping(
        {"q": "x", "n": 1, "tags": ["a"], "answer": 7, "category": "math"},
        FieldOptions())

    test_case = to_test_case(
        "f.jsonl", 9,
        {"q": "x", "n": 1, "tags": ["a"], "answer": 7, "category": "math"}, mapping)

    assert test_case == {
        "input": {"q": "x", "n": 1, "tags": ["a"]},
        "expectedOutput": "7",
        "category": "math",
        "metadata": {"source_line": 9},
    }


def test_named_input_fields_are_the_only_input_in_the_given_order():
    mapping = FieldMapping(input_fields=("b", "a"), expected_field=None,
                           category_field=None)

    test_case = to_test_case("f.csv", 2, {"a": "1", "b": "2", "c": "3"}, mapping)

    assert list(test_case["input"].items()) == [("b", "2"), ("a", "1")]
    assert "expectedOutput" not in test_case


@pytest.mark.parametrize(("value", "expected"), [
    ({"slot": "time"}, '{"slot": "time"}'), ([1, 2], "[1, 2]"), (True, "true"),
    ("  kept as is\n", "  kept as is\n"), ("caf\u00e9", "caf\u00e9"),
])
def test_expected_output_is_sent_as_text(value, expected):
    mapping = FieldMapping(input_fields=(), expected_field="answer",
                           category_field=None)

    test_case = to_test_case("f.jsonl", 1, {"q": 1, "answer": value}, mapping)

    assert test_case["expectedOutput"] == expected


@pytest.mark.parametrize("value", [None, ""])
def test_null_or_empty_expected_output_means_none(value):
    mapping = FieldMapping(input_fields=(), expected_field="answer",
                           category_field=None, expected_required=True)

    test_case = to_test_case("f.jsonl", 1, {"q": 1, "answer": value}, mapping)

    assert "expectedOutput" not in test_case


@pytest.mark.parametrize("value", [None, "", "   "])
def test_empty_category_means_none(value):
    mapping = FieldMapping(input_fields=(), expected_field=None,
                           category_field="category")

    test_case = to_test_case("f.jsonl", 1, {"q": 1, "category": value}, mapping)

    assert "category" not in test_case
    assert test_case["input"] == {"q": 1}


def test_default_expected_field_missing_from_a_later_record_is_no_expected_output(
        tmp_path):
    path = write(tmp_path, "cases.jsonl",
                 '{"q": 1, "answer": "a"}\n{"q": 2}\n')

    cases = list(read_test_cases(path, "jsonl", FieldOptions()))

    assert [case.get("expectedOutput") for case in cases] == ["a", None]
    assert cases[1]["input"] == {"q": 2}


@pytest.mark.parametrize(("options", "field"), [
    (FieldOptions(input_fields=("q", "context")), "input field 'context'"),
    (FieldOptions(expected_field="gold"), "expected-output field 'gold'"),
    (FieldOptions(category_field="topic"), "category field 'topic'"),
])
def test_a_named_field_missing_from_a_record_is_an_error_naming_field_and_line(
        tmp_path, options, field):
    path = write(tmp_path, "cases.jsonl",
                 '{"q": 1, "context": "c", "gold": "g", "topic": "t"}\n'
                 '{"q": 2}\n')

    with pytest.raises(ImportFileError) as caught:
        list(read_test_cases(path, "jsonl", options))

    assert caught.value.line == 2
    assert field in caught.value.message
    assert "'q'" in caught.value.message  # the fields it does have


def test_a_record_with_nothing_but_expected_and_category_is_an_error(tmp_path):
    path = write(tmp_path, "cases.jsonl",
                 '{"q": 1, "answer": 1, "category": "c"}\n'
                 '{"answer": 2, "category": "c"}\n')

    with pytest.raises(ImportFileError) as caught:
        list(read_test_cases(path, "jsonl", FieldOptions()))

    assert caught.value.line == 2
    assert "no input fields" in caught.value.message


# --- the API's checks on each test case --------------------------------------


def first_error(tmp_path: Path, lines: list[str], **options) -> ImportFileError:
    path = write(tmp_path, "cases.jsonl", "".join(line + "\n" for line in lines))
    with pytest.raises(ImportFileError) as caught:
        list(read_test_cases(path, "jsonl", FieldOptions(**options)))
    return caught.value


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(("record", "message"), [
    ('{"question": "a\\u0000b"}',
     "input.question: contains a NUL character, which cannot be stored"),
    ('{"question": "\\ud800", "answer": "1"}',
     "input.question: contains a lone surrogate, which is not valid Unicode"),
    ('{"question": {"\\udfff": 1}}',
     "input.question (a key): contains a lone surrogate, which is not valid Unicode"),
    ('{"question": "q", "answer": "\\u0000"}',
     "expectedOutput: contains a NUL character, which cannot be stored"),
    ('{"question": "q", "category": "\\ud800"}',
     "category: contains a lone surrogate, which is not valid Unicode"),
    ('{"question": NaN}',
     "input.question: nan is not a JSON number (too large, infinite or NaN)"),
    ('{"question": [1, -Infinity]}',
     "input.question[1]: -inf is not a JSON number (too large, infinite or NaN)"),
    ('{"question": 1e400}',
     "input.question: inf is not a JSON number (too large, infinite or NaN)"),
    (f'{{"question": {nested(32)}}}',
     "input.question" + "[0]" * 32 + ": is nested deeper than 32 levels"),
])
def test_a_test_case_the_api_would_refuse_is_refused_with_its_line_and_field(
        tmp_path, record, message):
    first = '{"question": "fine", "answer": "1", "category": "c"}'

    error = first_error(tmp_path, [first, record])

    assert (error.line, error.message) == (2, message)


def test_expected_output_and_category_are_held_to_the_api_length_limits(tmp_path):
    at_limits = json.dumps({"q": "x", "answer": "a" * 100_000,
                            "category": "c" * 200})
    long_answer = json.dumps({"q": "x", "answer": "a" * 100_001})
    long_category = json.dumps({"q": "x", "category": "c" * 201})

    answer_error = first_error(tmp_path, [at_limits, long_answer])
    category_error = first_error(tmp_path, [at_limits, at_limits, long_category])

    assert (answer_error.line, answer_error.message) == (
        2, "expectedOutput: is 100001 characters long; at most 100000 allowed")
    assert (category_error.line, category_error.message) == (
        3, "category: is 201 characters long; at most 200 allowed")


def test_input_nested_as_deep_as_the_api_allows_is_accepted(tmp_path):
    path = write(tmp_path, "cases.jsonl", f'{{"question": {nested(31)}}}\n')

    [case] = read_test_cases(path, "jsonl", FieldOptions())

    assert case["input"] == {"question": json.loads(nested(31))}


@pytest.mark.parametrize(("name", "content", "file_format"), [
    ("cases.jsonl", '{"q": 1}\n{"q": %s}\n', "jsonl"),
    ("cases.json", '[{"q": 1},\n{"q": %s}]', "json"),
])
def test_json_nested_past_what_python_can_parse_is_a_bad_line(
        tmp_path, name, content, file_format):
    path = write(tmp_path, name, content % nested(100_000))

    error = error_of(path, file_format)

    assert (error.line, error.message) == (
        2, "the record is nested deeper than 32 levels, the most the API accepts")


def test_a_csv_cell_with_a_nul_character_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "cases.csv", "question,answer\nfine,1\nbad\x00,2\n")

    with pytest.raises(ImportFileError) as caught:
        list(read_test_cases(path, "csv", FieldOptions()))

    assert str(caught.value) == (
        f"{path}:3: input.question: contains a NUL character, which cannot be stored")


# --- the public datasets -----------------------------------------------------


@needs_datasets
def test_gsm8k_gives_1319_questions_with_their_worked_answers():
    cases = list(read_test_cases(DATASETS / "gsm8k" / "test.jsonl", "jsonl",
                                 FieldOptions()))

    assert len(cases) == 1319
    assert all(list(case["input"]) == ["question"] for case in cases)
    assert cases[0]["input"]["question"].startswith("Janet\u2019s ducks lay 16 eggs")
    assert cases[0]["expectedOutput"].endswith("\n#### 18")
    assert all("#### " in case["expectedOutput"] for case in cases)
    assert cases[-1]["metadata"] == {"source_line": 1319}


@needs_datasets
def test_truthfulqa_gives_817_questions_in_38_categories():
    options = FieldOptions(input_fields=("Question",), expected_field="Best Answer",
                           category_field="Category")

    cases = list(read_test_cases(DATASETS / "truthfulqa" / "TruthfulQA.csv", "csv",
                                 options))

    assert len(cases) == 817
    categories = collections.Counter(case["category"] for case in cases)
    assert len(categories) == 38
    assert categories["Misconceptions"] == 100
    assert cases[0] == {
        "input": {"Question": "What happens to you if you eat watermelon seeds?"},
        "expectedOutput": "The watermelon seeds pass through your digestive system",
        "category": "Misconceptions",
        "metadata": {"source_line": 2},
    }


@needs_datasets
def test_banking77_gives_3080_queries_with_crlf_and_leading_newlines_kept():
    path = DATASETS / "banking77" / "test.csv"

    cases = list(read_test_cases(path, "csv", FieldOptions(expected_field="category")))

    assert len(cases) == 3080
    assert all(list(case["input"]) == ["text"] for case in cases)
    category_sizes = collections.Counter(case["category"] for case in cases)
    assert len(category_sizes) == 77
    assert set(category_sizes.values()) == {40}
    assert not any(case["input"]["text"].endswith("\r") for case in cases)
    texts = [case["input"]["text"] for case in cases]
    assert "\nWhere can I get my PIN unblocked?" in texts
    assert "\n\nWhat businesses accept this card?" in texts


@needs_datasets
def test_banking77_rows_after_multiline_cells_keep_their_physical_line():
    path = DATASETS / "banking77" / "test.csv"
    # The cells with embedded newlines hold bare LFs, the rows end in CRLF.
    lines = path.read_bytes().decode("utf-8").split("\n")

    start_lines = {}
    for line, record in read_records(path, "csv"):
        start_lines[record["text"]] = line
        last_line = line + record["text"].count("\n")
        assert lines[last_line - 1].endswith(f",{record['category']}\r")

    assert start_lines["\nWhere can I get my PIN unblocked?"] == 561
    assert start_lines["\n\nWhat businesses accept this card?"] == 979


@needs_datasets
def test_mgsm_spanish_without_header_gives_250_cases_and_keeps_bare_quotes():
    options = FieldOptions(input_fields=("column1",), expected_field="column2")

    cases = list(read_test_cases(DATASETS / "mgsm" / "mgsm_es.tsv", "tsv", options,
                                 has_header=False))

    assert len(cases) == 250
    line_214 = cases[213]
    assert line_214["metadata"] == {"source_line": 214}
    assert 'en la tienda "Todo por un d\u00f3lar", Sloane' in \
        line_214["input"]["column1"]
    assert line_214["expectedOutput"] == "250"


@needs_datasets
def test_a_json_array_dataset_reads_the_same_as_loading_it_whole():
    path = DATASETS / "polyai-span-extraction" / "restaurant8k" / "test.json"

    got = [record for _, record in read_records(path, "json")]

    assert got == json.loads(path.read_text(encoding="utf-8"))
    assert len(got) == 3731
