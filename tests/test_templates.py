"""Prompt templates: compiling, rendering, and refusing what could escape."""

from __future__ import annotations

import contextlib
import re
import sys
import tracemalloc

import pytest
from markupsafe import Markup

from app.templates import (
    MAX_PROMPT_CHARS,
    MAX_TEMPLATE_CHARS,
    TemplateError,
    TemplateRefused,
    compile_template,
)


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        ("Q: {{ question }}\nA:", {"question"}),
        ("{{ a }} {{ b.c }} {{ d['e'] }} {{ a }}", {"a", "b", "d"}),
        ("{% for x in items %}{{ x }}{{ loop.index }}{% endfor %}", {"items"}),
        ("{% set y = 1 %}{{ y }}", set()),
        ("{{ name|default('someone') }}", {"name"}),
        ("{% if context is defined %}{{ context }}{% endif %}{{ q }}",
         {"context", "q"}),
        ("No variables at all.", set()),
    ],
)
def test_compiling_finds_the_variables_a_template_reads(source, variables):
    template = compile_template(source)

    assert template.source == source
    assert template.variables == frozenset(variables)


@pytest.mark.parametrize(
    ("source", "variables", "prompt"),
    [
        ("Q: {{ question }}\nA:", {"question": "2 + 2?"}, "Q: 2 + 2?\nA:"),
        ("{{ question }}\n", {"question": "Why?"}, "Why?\n"),
        ("<b>{{ text }}</b>", {"text": "a < b & \"c\""}, "<b>a < b & \"c\"</b>"),
        ("{% for e in examples %}Q: {{ e.q }} A: {{ e.a }}\n{% endfor %}",
         {"examples": [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}]},
         "Q: 1+1 A: 2\nQ: 2+2 A: 4\n"),
        ("{% if hint %}Hint: {{ hint }}\n{% endif %}Go", {"hint": ""}, "Go"),
        ("{% if context is defined %}C: {{ context }}\n{% endif %}Q", {}, "Q"),
        ("{{ d['key with space'] }}", {"d": {"key with space": "ok"}}, "ok"),
        ("{{ n + 1 }} {{ '%.2f' % price }}", {"n": 41, "price": 3.14159},
         "42 3.14"),
        ("{{ ids[0] }}-{{ ids[-1] }}", {"ids": [7, 8, 9]}, "7-9"),
        ("{{ '%d%% of 10000000000' % n }}", {"n": 5}, "5% of 10000000000"),
    ],
)
def test_rendering_fills_in_the_variables(source, variables, prompt):
    assert compile_template(source).render(variables) == prompt


@pytest.mark.parametrize(
    ("source", "prompt"),
    [
        ("{{ s|upper }}", "MIXED CASE"),
        ("{{ s|lower }}", "mixed case"),
        ("[{{ padded|trim }}]", "[x]"),
        ("{{ items|join(', ') }}", "a, b, c"),
        ("{{ missing|default('n/a') }}", "n/a"),
        ("{{ items|length }} {{ s|length }}", "3 10"),
        ("{{ s|replace('Case', 'bag') }}", "Mixed bag"),
        ("{{ s|title }} {{ s|capitalize }}", "Mixed Case Mixed case"),
        ("{{ items|first }}{{ items|last }}", "ac"),
        ("{{ items|reverse|join }}", "cba"),
        ("{{ rows|map(attribute='name')|join(' ') }}", "x y"),
        ("{{ '%05.1f'|format(2.25) }}", "002.2"),
        ("{{ s|truncate(9, leeway=0) }}", "Mixed..."),
        ("{{ 'x'|center(5) }}|", "  x  |"),
        ("{{ rows|tojson }}", '[{"name": "x"}, {"name": "y"}]'),
        ("{{ s.split()|join('+') }} {{ s.upper() }}", "Mixed+Case MIXED CASE"),
    ],
)
def test_the_usual_filters_work(source, prompt):
    variables = {"s": "Mixed Case", "padded": "  x \n", "items": ["a", "b", "c"],
                 "rows": [{"name": "x"}, {"name": "y"}]}

    assert compile_template(source).render(variables) == prompt


def test_a_missing_variable_is_named_with_its_line():
    template = compile_template("Context: {{ context }}\nQ: {{ question }}")

    with pytest.raises(TemplateError, match="line 2: .*'question' is undefined"):
        template.render({"context": "..."})


@pytest.mark.parametrize("source", ["{{ [question] }}", "{{ {'q': question} }}"])
def test_a_missing_variable_inside_a_list_or_dict_is_not_printed(source):
    template = compile_template(source)

    with pytest.raises(TemplateError, match="'question' is undefined"):
        template.render({})


def test_a_missing_attribute_of_a_variable_is_named():
    template = compile_template("{{ example.answer }}")

    with pytest.raises(TemplateError, match="no attribute 'answer'"):
        template.render({"example": {"question": "?"}})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("line one\n{{ question }}\n{% if %}", "line 3: "),
        ("{{ question", "line 1: "),
        ("{% for x in xs %}\n{{ x }}\n", "line 2: .*endfor"),
        ("ok\n{{ x|no_such_filter }}", "line 2: No filter named 'no_such_filter'"),
    ],
)
def test_a_syntax_error_is_reported_with_its_line(source, message):
    with pytest.raises(TemplateError, match=message):
        compile_template(source)


@pytest.mark.parametrize("source", ["", "   \n\t"])
def test_an_empty_template_is_refused(source):
    with pytest.raises(TemplateError, match="empty"):
        compile_template(source)


def test_a_template_over_the_size_limit_is_refused():
    compile_template("x" * MAX_TEMPLATE_CHARS)

    with pytest.raises(TemplateError, match="limit is 100,000"):
        compile_template("x" * (MAX_TEMPLATE_CHARS + 1))


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ lipsum.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ self }}",
        "{{ self._TemplateReference__context }}",
        "{{ question.__class__ }}",
        "{{ question['__class__'] }}",
        "{{ question|attr('__class__') }}",
        "{{ rows|map(attribute='__class__')|list }}",
        "{{ rows|map(attribute='x.__class__')|list }}",
        "{{ range(10) }}",
        "{{ namespace(a=1) }}",
        "{{ dict(a=1) }}",
        "{% include 'other.txt' %}",
        "{% import 'macros' as m %}",
        "{% extends 'base' %}",
    ],
)
def test_reaching_for_python_internals_is_refused_when_compiling(source):
    with pytest.raises(TemplateError):
        compile_template(source)


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        ("{{ x[name] }}", {"x": "s", "name": "__class__"}),
        ("{{ x|attr(name) }}", {"x": "s", "name": "__class__"}),
        ("{{ (x|attr(name))|attr(name) }}", {"x": "s", "name": "__class__"}),
        ("{{ (x|attr(name))|attr('mro') }}", {"x": "s", "name": "__class__"}),
        ("{{ xs|map(attribute=name)|list }}", {"xs": ["s"], "name": "__class__"}),
        ("{{ x[a ~ b] }}", {"x": "s", "a": "__cla", "b": "ss__"}),
        ("{{ f.__call__ }}", {"f": "x"}),
        ("{{ xs.append(1) }}{{ xs }}", {"xs": []}),
        ("{{ d.update({'a': 1}) }}", {"d": {}}),
        ("{{ x.format(1) }}", {"x": "{}"}),
        ("{{ (x|attr('format'))(1) }}", {"x": "{0.__class__}"}),
        ("{{ x['format'](1) }}", {"x": "{0.__class__}"}),
    ],
)
def test_reaching_for_python_internals_is_refused_by_the_time_it_renders(
    source, variables
):
    """Refused when compiled, or else refused by the sandbox when rendered
    (TemplateRefused, which createEvaluation's trial turns away): never
    an ordinary error that would let it be stored."""
    try:
        template = compile_template(source)
    except TemplateError:
        return
    with pytest.raises(TemplateRefused):
        template.render(variables)


@pytest.mark.parametrize("source", [
    "{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}"
    "{% endfor %}",
    "{% macro m() %}{% for i in xs %}{% endfor %}{% endmacro %}"
    "{% for j in xs %}{{ m() }}{% endfor %}",
    "{{ xs|map('string')|join(',')|length }}",
    "{{ xs|select('odd')|list|length }}",
])
def test_a_render_past_its_time_limit_is_refused(source):
    template = compile_template(source)

    with pytest.raises(TemplateRefused, match="rendering took longer than 0.05 s"):
        template.render({"xs": list(range(1_000_000))}, time_limit_s=0.05)
    # A usual template is far inside any limit, and the limit goes with the
    # render that had it.
    assert compile_template("Q: {{ q }}").render({"q": "x"},
                                                 time_limit_s=0.05) == "Q: x"
    assert template.render({"xs": [1]}) is not None


@pytest.mark.parametrize("source", ["{{ config }}", "{{ cycler }}", "{{ lipsum }}"])
def test_jinjas_usual_globals_are_not_there_at_all(source):
    with pytest.raises(TemplateError, match="missing variable: '[a-z]+' is undefined"):
        compile_template(source).render({})


def test_a_refused_attribute_is_named_in_the_error():
    template = compile_template("{{ x[name] }}")

    with pytest.raises(TemplateError, match="line 1: not allowed: .*'__class__'"):
        template.render({"x": "s", "name": "__class__"})


def test_a_prompt_at_the_size_limit_renders_and_one_past_it_is_refused():
    template = compile_template("{{ text }}")

    assert len(template.render({"text": "x" * MAX_PROMPT_CHARS})) == MAX_PROMPT_CHARS
    with pytest.raises(TemplateError, match="longer than the limit of 1,000,000"):
        template.render({"text": "x" * MAX_PROMPT_CHARS + "!"})


def test_a_loop_that_builds_a_huge_prompt_is_stopped():
    template = compile_template("{% for i in xs %}{% for j in xs %}{{ big }}"
                                "{% endfor %}{% endfor %}")

    with pytest.raises(TemplateError, match="longer than the limit"):
        template.render({"xs": list(range(10_000)), "big": "y" * 1_000})


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        "{{ 10**9 * 'a' }}",
        "{{ 2 ** 100000 }}",
        "{{ '%9999999999d' % 1 }}",
        "{{ '%*d' % (10**9, 1) }}",
        "{{ '%9999999999d'|format(1) }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'x\na'|indent(width=10**9) }}",
        "{{ [1]|batch(10**9, 0)|list }}",
        "{{ [1]|slice(10**9)|list }}",
        "{{ 'x'.ljust(10**9) }}",
        "{{ 'x'.zfill(10**9) }}",
        "{{ '{:>9999999999}'.format(1) }}",
    ],
)
def test_a_number_cannot_make_one_operation_huge(source):
    template = compile_template(source)

    with pytest.raises(TemplateError, match="not allowed"):
        template.render({})


def test_a_runtime_error_in_the_template_is_reported_with_its_line():
    template = compile_template("Total:\n{{ a / b }}")

    with pytest.raises(TemplateError, match="line 2: ZeroDivisionError"):
        template.render({"a": 1, "b": 0})


def test_endless_recursion_in_a_macro_is_reported():
    template = compile_template("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")

    with pytest.raises(TemplateError, match="RecursionError"):
        template.render({})


# A million-character string, and a list holding it 400 times. The list is
# small in memory, but printing or joining it makes 400 million characters.
_BIG = "{% set b = 'b' * 1000000 %}"
_SHARED = "[" + "b, " * 400 + "]"
_SHARED_TUPLE = "(" + "b, " * 400 + ")"
_SHARED_ROWS = "[" + "{'t': b}, " * 400 + "]"
_MAX_PEAK_BYTES = 50_000_000


def _render_measuring_peak(source: str, variables: dict) -> tuple[str, int]:
    """The TemplateError rendering raises, and the most memory it held."""
    template = compile_template(source)
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError) as refused:
            template.render(variables)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(refused.value), peak_bytes


@pytest.mark.parametrize(
    ("source", "operation"),
    [
        # Reported: replace with an empty `old` inserts between every
        # character; a long `new` times many occurrences does the same.
        ("{{ ('a' * 30000)|replace('', 'b' * 10000) }}", "replace"),
        ("{{ ('a' * 100000)|replace('a', 'b' * 1000) }}", "replace"),
        ("{{ ('a' * 30000).replace('', 'b' * 10000) }}", r"\.replace\(\)"),
        ("{{ ('a' * 100000)|replace('a', 'b' * 1000, 2000) }}", "replace"),
        # Reported: list repetition, then join.
        ("{{ (['b' * 1000000] * 400)|join }}", "'\\*'"),
        (_BIG + "{{ " + _SHARED + "|join }}", "join"),
        (_BIG + "{{ " + _SHARED_ROWS + "|join(', ', attribute='t') }}", "join"),
        (_BIG + "{{ '-'.join(" + _SHARED + ") }}", r"\.join\(\)"),
        ("{{ 'ab'.encode() * 10**9 }}", "'\\*'"),
        ("{{ [[1, 2, 3]] * 300000 }}", "'\\*'"),
        (_BIG + "{{ b ~ b }}", "'~'"),
        (_BIG + "{{ b" + " ~ b" * 400 + " }}", "'~'"),
        (_BIG + "{{ 'x' ~ " + _SHARED + " }}", "'~'"),
        (_BIG + "{{ b + b }}", "'\\+'"),
        (_BIG + "{{ [b] + [b] }}", "'\\+'"),
        ("{% set x = 2 ** 2000 %}{{ x * x * x }}", "'\\*'"),
        (_BIG + "{{ ('%s' * 400) % " + _SHARED_TUPLE + " }}", "'%'"),
        ("{{ ('%999999d' * 1000) % ((1,) * 1000) }}", "'%'"),
        (_BIG + "{{ ('%(b)s' * 400)|format(b=b) }}", "format"),
        (_BIG + "{{ '%s'|format(" + _SHARED + ") }}", "format"),
        (_BIG + "{{ ('%(b)s' * 400) % {'b': b} }}", "'%'"),
        (_BIG + "{{ " + _SHARED + " }}", "printing"),
        (_BIG + "{{ {'k': " + _SHARED + "} }}", "printing"),
        (_BIG + "{{ " + _SHARED + "|string }}", "string"),
        (_BIG + "{{ " + _SHARED + "|upper }}", "upper"),
        (_BIG + "{{ " + _SHARED + "|tojson }}", "tojson"),
        (_BIG + "{{ " + _SHARED + " is lower }}", "lower"),
        (_BIG + "{{ " + _SHARED + "|replace('x', 'y') }}", "replace"),
        (_BIG + "{{ 'x'|center(10) ~ " + _SHARED + "|center(10) }}", "center"),
        ("{% set x = [[[[[[[[[[1]]]]]]]]]] %}"
         "{{ ([x] * 10000)|tojson(indent=1000) }}", "tojson"),
        ("{{ ('x\\n' * 500000)|indent(1000) }}", "indent"),
        ("{{ ('x\\n' * 500000)|indent('>' * 1000, blank=true) }}", "indent"),
        ("{{ ('a ' * 500000)|wordwrap(1, wrapstring='b' * 1000) }}", "wordwrap"),
        ("{{ ('a.com ' * 10000)|urlize(target='t' * 100000) }}", "urlize"),
        ("{{ ('a' * 100000).translate({97: 'b' * 10000}) }}", r"\.translate\(\)"),
        ("{{ (1).to_bytes(10**9, 'big') }}", r"\.to_bytes\(\)"),
        ("{{ 'x'.encode().ljust(10**9) }}", "unsafe"),
        ("{{ 'x'.encode().center(10**9) }}", "unsafe"),
        ("{{ '%9999999999d'.encode() % 1 }}", "not allowed"),
        # What a macro or block collects is joined when it ends.
        ("{% macro f() %}{% for i in 'x' * 1000 %}{{ 'b' * 1000000 }}"
         "{% endfor %}{% endmacro %}{{ f()|length }}", "macro or block"),
        ("{% set x %}{% for i in 'x' * 1000 %}{{ 'b' * 1000000 }}{% endfor %}"
         "{% endset %}{{ x|length }}", "macro or block"),
        ("{% filter length %}{% for i in 'x' * 1000 %}{{ 'b' * 1000000 }}"
         "{% endfor %}{% endfilter %}", "macro or block"),
        ("{% macro m() %}{{ caller()|length }}{% endmacro %}{% call m() %}"
         "{% for i in 'x' * 1000 %}{{ 'b' * 1000000 }}{% endfor %}{% endcall %}",
         "macro or block"),
        # Filters that make a new value per item, and what keeps them all.
        ("{{ ('x' * 1000)|list|map('center', 1000000)|list|length }}", "map|list"),
        ("{% for x in ('x' * 1000)|list|map('center', 1000000) %}"
         "{{ loop.length }}{% endfor %}", "map"),
        ("{{ ('x' * 1000)|list|map('center', 1000000)|sort|length }}", "map|sort"),
        ("{% set l = [0] * 200000 %}{{ [" + "l, " * 100 + "]"
         "|sum(start=[])|length }}", "sum"),
        (_BIG + "{{ " + _SHARED + "|sort|length }}", "sort"),
        (_BIG + "{{ {'a': b, 'b': b, 'c': b}|dictsort(by='value')|length }}",
         "dictsort"),
        # Error messages that repeat a value with repr().
        (_BIG + "{{ [].index(" + _SHARED + ") }}", r"\.index\(\)"),
    ],
)
def test_no_single_operation_can_make_more_than_a_prompt(source, operation):
    message, peak_bytes = _render_measuring_peak(source, {})

    assert re.search(f"line 1: not allowed: .*{operation}", message), message
    assert peak_bytes < _MAX_PEAK_BYTES


def test_looking_up_a_missing_item_by_a_huge_key_names_it_briefly():
    source = _BIG + "{{ {}[" + _SHARED + "] }}"

    message, peak_bytes = _render_measuring_peak(source, {})

    assert "too long to show" in message
    assert peak_bytes < _MAX_PEAK_BYTES


def test_a_huge_input_list_cannot_be_printed_or_joined():
    shared = ["b" * 1_000_000] * 400

    for source in ["{{ xs }}", "{{ xs|join }}", "{{ xs|map('upper')|list }}"]:
        message, peak_bytes = _render_measuring_peak(source, {"xs": shared})

        assert "not allowed" in message
        assert peak_bytes < _MAX_PEAK_BYTES


def test_pprint_is_not_available():
    with pytest.raises(TemplateError, match="No filter named 'pprint'"):
        compile_template("{{ x|pprint }}")


@pytest.mark.parametrize(
    ("source", "prompt"),
    [
        ("{{ 'ab' * 3 }} {{ '-' * 20 }}", "ababab " + "-" * 20),
        ("{{ [1, 2] * 2 }} {{ (1,) * 3 }}", "[1, 2, 1, 2] (1, 1, 1)"),
        ("{{ 'a' + 'b' }} {{ [1] + [2] }} {{ 2 * 3 }}", "ab [1, 2] 6"),
        ("{{ 'n=' ~ 3 ~ ' ' ~ [1] ~ none }}", "n=3 [1]None"),
        ("{{ 'Q: %s (%d%%)' % ('why', 5) }}", "Q: why (5%)"),
        ("{{ '%(q)s/%(q)s'|format(q='x') }}", "x/x"),
        ("{{ 'a, b'|replace(', ', '\n') }}", "a\nb"),
        ("{{ 'abc'|replace('', '.') }} {{ 'aaa'|replace('a', 'bb', 2) }}",
         ".a.b.c. bbbba"),
        ("{{ 'x y'.replace(' ', '_') }}", "x_y"),
        ("{{ ['a', 'b']|join(', ') }} {{ ' '.join(['c', 'd']) }}", "a, b c d"),
        ("{{ [{'n': 'x'}, {'n': 'y'}]|join('+', attribute='n') }}", "x+y"),
        ("{{ 'a\nb'|indent(2) }}", "a\n  b"),
        ("{{ 'a\nb'|indent('> ', first=true) }}", "> a\n> b"),
        ("{{ 'aa bb cc'|wordwrap(5, wrapstring='|') }}", "aa bb|cc"),
        ("{{ 'aa bb cc'|wordwrap(2, wrapstring='<br>') }}", "aa<br>bb<br>cc"),
        ("{{ 'go to www.x.com'|urlize }}",
         'go to <a href="https://www.x.com" rel="noopener">www.x.com</a>'),
        ("{{ {'b': [1], 'a': 2}|tojson(indent=1) }}",
         '{\n "a": 2,\n "b": [\n  1\n ]\n}'),
        ("{{ [[1], [2]]|sum(start=[]) }} {{ [1, 2]|sum }}", "[1, 2] 3"),
        ("{{ ['b', 'A']|sort|join }} {{ {'b': 1, 'A': 2}|dictsort|first }}",
         "Ab ('A', 2)"),
        ("{{ ['a', 'B', 'A']|unique|list }}", "['a', 'B']"),
        ("{{ 'abc'|list|map('upper')|join }}", "ABC"),
        ("{% for x in 'ab'|list|map('upper') %}{{ loop.length }}{{ x }}"
         "{% endfor %}", "2A2B"),
        ("{{ [1, 2, 3]|batch(2)|list }} {{ [1, 2, 3]|slice(2)|list }}",
         "[[1, 2], [3]] [[1, 2], [3]]"),
        ("{{ [3, 1]|select('>', 1)|reverse|list }}", "[3]"),
        ("{% macro f(x) %}<{{ x }}>{% endmacro %}{{ f(1) }}{{ f('a') }}",
         "<1><a>"),
        ("{% set s %}a{{ 1 }}{% endset %}{{ s }} "
         "{% filter upper %}b{% endfilter %}", "a1 B"),
        ("{{ 'abc'.translate({97: 'A'}) }} {{ (258).to_bytes(2, 'big') }}",
         "Abc b'\\x01\\x02'"),
        ("{{ {'k': 'v'}|xmlattr }} {{ 'X' is upper }}", ' k="v" True'),
        ("{{ [1, 2].index(2) }} {{ 'a b'|urlencode }}", "1 a%20b"),
    ],
)
def test_the_checked_operations_still_work_on_prompt_sized_values(source, prompt):
    assert compile_template(source).render({}) == prompt


def test_joining_with_tilde_still_escapes_only_unsafe_text_under_autoescape():
    template = compile_template("{% autoescape true %}{{ a ~ b }}{% endautoescape %}")

    assert template.render({"a": "<", "b": Markup("<b>")}) == "&lt;<b>"


def test_a_long_input_can_still_be_filtered_and_printed():
    text = "word " * 150_000
    template = compile_template(
        "{{ text|replace('word', 'term')|wordwrap(79)|indent(2)|length }}"
    )

    assert int(template.render({"text": text})) > 750_000


@pytest.mark.parametrize(("source", "plain"), [
    ("{{ question }}", True),
    ("Q: {{ question }}\nA: {{ case.context[0] }} {{ case['id'] }}", True),
    ("{% for x in xs %}{{ x }}{% endfor %}", False),
    ("{% if q %}x{% endif %}", False),
    ("{{ q | upper }}", False),
    ("{{ q ~ q }}", False),
    ("{{ 'ab' * 3 }}", False),
    ("{{ q.upper() }}", False),
])
def test_only_a_template_that_merely_prints_goes_without_a_time_limit(
        source, plain, monkeypatch):
    template = compile_template(source)
    traced = []
    monkeypatch.setattr(sys, "settrace", traced.append)

    with contextlib.suppress(TemplateError):
        template.render({"question": "q", "case": {"context": ["c"], "id": 1},
                         "xs": [1], "q": "q"}, time_limit_s=1.0)

    assert template.plain is plain
    # A time limit is a tracer, set and then put back.
    assert len(traced) == (0 if plain else 2)
