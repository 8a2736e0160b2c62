"""Prompt templates: compiling, rendering, and refusing what could escape."""

from __future__ import annotations

import pytest

from app.templates import (
    MAX_PROMPT_CHARS,
    MAX_TEMPLATE_CHARS,
    TemplateError,
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
        ("{{ config }}", {}),
        ("{{ cycler }}", {}),
        ("{{ x[name] }}", {"x": "s", "name": "__class__"}),
        ("{{ x|attr(name) }}", {"x": "s", "name": "__class__"}),
        ("{{ (x|attr(name))|attr(name) }}", {"x": "s", "name": "__globals__"}),
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
    with pytest.raises(TemplateError):
        compile_template(source).render(variables)


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
