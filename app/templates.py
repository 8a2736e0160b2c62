"""Prompt templates: the Jinja-style text that turns a test case's input
variables into the prompt sent to the model, e.g. `"Q: {{ question }}\\nA:"`.

Templates come from API users, so they are treated as untrusted code:

- They run in Jinja's immutable sandbox, which refuses attributes that lead
  to Python internals and methods that change data.
- The environment has no globals, so `range`, `lipsum`, `cycler`, `joiner`,
  `namespace` and `dict` do not exist; calling one is refused when the
  template is compiled. The debugging filter `pprint` is left out too: its
  indentation grows with nesting and key length, so its size cannot be
  told in advance.
- Attribute and item names starting with `_`, `self`, and `include`,
  `import` and `extends` are refused when the template is compiled; anything
  that gets past that meets the sandbox at render time.
- No single operation can make a value much longer than a prompt
  (MAX_PROMPT_CHARS). Each is refused before it runs or, if it builds its
  result a piece at a time, as soon as it passes the limit: `*` on text,
  bytes, lists and tuples; `+`; `~`; `%` and the format filter; `**` and
  products of integers; printing a list or dict; the output a macro or a
  `{% set %}`, `{% filter %}` or `{% call %}` block collects; `replace` and
  `join` (filter and method); `str.translate`; `int.to_bytes`; `center`,
  `indent`, `wordwrap`, `urlize`, `tojson` and `sum`; `map` with a filter;
  the filters and tests that turn a value into text; and the filters that
  collect a lazy sequence (`list`, `sort`, `batch`, ...). Padding methods
  (`ljust`, `zfill`, ...) are not available at all. Rendering stops as soon
  as the prompt passes MAX_PROMPT_CHARS.
- Sizes are estimated without building anything: text by its length, a
  list or dict by how it would print, counting a part once for every place
  it appears. So a list that would print longer than a prompt can still be
  looped over, counted and indexed, but not printed, joined, added to,
  repeated or sorted ignoring case. Escaping is left out of the estimate:
  `escape`, `urlencode`, `urlize`, `tojson`, `%r` and upper-casing can make
  up to about a dozen times the limit from a value within it.

- An attribute the sandbox refuses fails the render at once, rather than
  becoming an undefined value that a further `|attr` would turn into a
  plain "missing variable".
- A render can be given a time limit (`render(..., time_limit_s=...)`): the
  template's own code is checked against it line by line, so nested loops
  end there. Single operations written in C are not interrupted, but each
  is bounded by the size limits above.

Known shortcomings: the size limit is per operation, so what a template
keeps alive at once is not bounded. Thousands of prompt-sized strings held
in `{% set %}`s or in one list literal can still take gigabytes (a million
characters each, at one to four bytes a character), as fast as the time
limit allows (a few hundred megabytes in a quarter of a second); a macro
calling itself until the recursion limit stops it, holding one at each of
some 150 levels, a few hundred megabytes. Rendering in a child process with
a memory limit would close this.
"""

from __future__ import annotations

import functools
import gc
import inspect
import itertools
import os
import re
import sys
import time
import traceback
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup

MAX_TEMPLATE_CHARS = 100_000
MAX_PROMPT_CHARS = 1_000_000
# 2 ** 4096 already has over 1,200 digits; nothing a prompt needs is larger.
_MAX_POWER_BITS = 4_096
# An undefined value's error message repeats the name it was looked up by.
_MAX_NAME_CHARS = 200

# The globals a default Jinja environment has. Ours has none, so these are
# plain variables, and calling one can only be a mistake or an attack.
_DEFAULT_GLOBALS = frozenset(
    {"range", "lipsum", "cycler", "joiner", "namespace", "dict"}
)
# str and bytes methods that pad to any width they are given.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_TEXT_TYPES = (str, bytes, bytearray)
_SHORT_TYPES = frozenset({str, int, float, bool, type(None)})
# Filters whose named argument is a count of characters or items to produce.
_SIZE_ARGUMENTS = {"center": "width", "batch": "linecount", "slice": "slices"}
# Filters and tests that turn their value into text with str(), which for a
# list holding one long string many times is far longer than the list.
_TEXT_FILTERS = (
    "capitalize", "center", "e", "escape", "forceescape", "lower", "safe",
    "string", "striptags", "title", "trim", "upper", "urlencode", "wordcount",
    "xmlattr",
)
_TEXT_TESTS = ("lower", "upper")
# Filters that turn a lazy iterable (a `map` or `select`) into a list.
_COLLECTING_FILTERS = (
    "batch", "groupby", "list", "reverse", "slice", "sort", "unique",
)
# Filters that, unless case_sensitive, keep a lower-cased copy of every
# string they compare.
_CASE_FOLDING_FILTERS = ("dictsort", "groupby", "sort", "unique")
# str.splitlines() ends a line at any of these.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# Where textwrap may end a line: at whitespace, or after a hyphen.
_WRAP_POINTS = "\t\n\x0b\x0c\r -"
# Every link urlize makes comes from a word holding one of these.
_LINK_MARKS = ".@:"
# The most urlize adds around each link besides rel and target:
# <a href="https://..." rel="..." target="...">...</a>
_LINK_OVERHEAD_CHARS = 64
# The widths and precisions in a %-format, e.g. "10" and "2" in "%10.2f",
# and the key in "%(name)s"; "%%" is a literal percent sign, matched first so
# it is skipped.
_PERCENT_SPEC = re.compile(
    r"%%|%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?"
)


class TemplateError(ValueError):
    """The template cannot be used; `str()` says what is wrong and where
    (`line N: ...` when the line is known)."""


class TemplateRefused(TemplateError):
    """Rendering reached for something the sandbox refuses (a private
    attribute, an unsafe call, an operation over its size limits, more time
    than it was given)."""


@dataclass(frozen=True)
class PromptTemplate:
    """A compiled prompt template; compile once, render for every test case.

    `variables` holds the top-level variables the template reads, so a test
    set can be checked against it before an evaluation starts.
    """

    source: str
    variables: frozenset[str]
    _template: jinja2.Template = field(repr=False, compare=False)
    # Whether the template only prints text and variables (`Q: {{ question
    # }}`): its render cannot loop or compute, so it needs no time limit,
    # whose tracing costs ten times the render.
    plain: bool = False

    def render(self, variables: Mapping[str, Any], *,
               time_limit_s: float | None = None) -> str:
        """The prompt for one test case's input variables.

        Raises TemplateError for a missing variable, a refused operation, a
        prompt over MAX_PROMPT_CHARS characters or (TemplateRefused) a render
        that runs past `time_limit_s`, naming it and its line.
        """
        chunks: list[str] = []
        num_chars = 0
        stream = self._template.generate(variables)
        limit = (_TimeLimit(time_limit_s)
                 if time_limit_s is not None and not self.plain else None)
        try:
            if limit is not None:
                limit.start()
            for chunk in stream:
                num_chars += len(chunk)
                if num_chars > MAX_PROMPT_CHARS:
                    raise TemplateError(
                        f"the rendered prompt is longer than the limit of "
                        f"{MAX_PROMPT_CHARS:,} characters"
                    )
                # A loop printing empty strings adds nothing to num_chars,
                # so keeping its chunks would grow the list without limit.
                if chunk:
                    chunks.append(chunk)
        except _OutOfTime:
            raise TemplateRefused(
                f"rendering took longer than {time_limit_s:g} s") from None
        except TemplateError:
            raise
        except jinja2.UndefinedError as error:
            raise TemplateError(f"{_where(error)}missing variable: {error}") from None
        except SecurityError as error:
            raise TemplateRefused(f"{_where(error)}not allowed: {error}") from None
        except Exception as error:
            # The template is user code: whatever it raises (a division by
            # zero, adding text to a number) is the template's fault.
            raise TemplateError(
                f"{_where(error)}{type(error).__name__}: {error}"
            ) from error
        finally:
            if limit is not None:
                limit.stop()
            stream.close()
        return "".join(chunks)


class _OutOfTime(BaseException):
    # A BaseException, so that no `except Exception` on the way out of the
    # template's code can swallow it.
    pass


class _TimeLimit:
    """Stops a render past a deadline, checked on every line the template's
    compiled code (Jinja compiles a template to Python) and Jinja's own
    runtime and filters run.

    The render is stopped only from inside that code: a line of anything
    else that happens to run meanwhile (a weakref callback, say) must never
    see an exception it did not cause. The garbage collector is paused for
    the render, so that neither its pauses nor its callbacks land in it.

    Known shortcoming: sys.settrace replaces any tracer already set (a
    debugger, coverage) for the length of the render; it is put back after.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline = 0.0
        self._previous: Any = None
        self._collecting = False
        self._expired = False

    def start(self) -> None:
        self._deadline = time.perf_counter() + self._seconds
        self._collecting = gc.isenabled()
        gc.disable()
        self._previous = sys.gettrace()
        sys.settrace(self._check)

    def stop(self) -> None:
        sys.settrace(self._previous)
        if self._collecting:
            gc.enable()

    def _check(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        if self._expired:
            return None
        filename = frame.f_code.co_filename
        # Not the size checks of this module: tracing their every line would
        # cost several times the render, and their loops are bounded by the
        # very limits they check.
        if event == "call" and filename == __file__:
            return None
        if (time.perf_counter() > self._deadline
                and (filename == "<template>" or filename.startswith(_JINJA_DIR))):
            self._expired = True
            raise _OutOfTime
        return self._check


_JINJA_DIR = os.path.dirname(jinja2.__file__)


def compile_template(source: str) -> PromptTemplate:
    """Parse and check a prompt template, ready to render.

    Raises TemplateError for an empty template, one over 100,000 characters,
    a syntax error (with its line), or a construct refused in prompts.
    """
    if not source.strip():
        raise TemplateError("the template is empty")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"the template is {len(source):,} characters long; the limit is "
            f"{MAX_TEMPLATE_CHARS:,}"
        )

    environment = _environment()
    try:
        tree = environment.parse(source)
        _refuse_unsafe_nodes(tree)
        variables = frozenset(meta.find_undeclared_variables(tree))
        template = environment.from_string(tree)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"line {error.lineno}: {error.message}") from None
    except (RecursionError, SyntaxError):
        raise TemplateError("the template is nested too deeply to compile") from None

    return PromptTemplate(source=source, variables=variables, _template=template,
                          plain=_only_prints_variables(tree))


# Printing text, a variable, or an attribute or item of one.
_PLAIN_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name,
                nodes.Getattr, nodes.Getitem, nodes.Const)


def _only_prints_variables(tree: nodes.Template) -> bool:
    return all(type(node) in _PLAIN_NODES for node in tree.find_all(nodes.Node))


class _PromptCodeGenerator(CodeGenerator):
    """Jinja's compiler, with `~` and captured output sent through checks.

    Neither has a hook in the sandbox: Jinja compiles `a ~ b` to a plain
    join, and the output of a macro or block to a plain list that is joined
    when it ends.
    """

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat_operands(context.eval_ctx, (")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")

    def buffer(self, frame: Frame) -> None:
        super().buffer(frame)
        self.writeline(f"{frame.buffer} = environment.output_buffer()")


class _CapturedOutput(list):
    """The output a macro or a set, filter or call block collects; it refuses
    to grow past the prompt limit.

    Empty chunks are dropped: they add no characters, so a loop writing
    nothing could otherwise grow the list for as long as it runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.num_chars = 0

    def append(self, chunk: Any) -> None:
        if chunk:
            self._count(chunk)
            super().append(chunk)

    def extend(self, chunks: Iterable[Any]) -> None:
        kept = [chunk for chunk in chunks if chunk]
        for chunk in kept:
            self._count(chunk)
        super().extend(kept)

    def _count(self, chunk: Any) -> None:
        self.num_chars += _printed_size(chunk)
        _refuse_over_limit(self.num_chars, "the output of a macro or block")


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus limits on the operations a template can blow up."""

    code_generator_class = _PromptCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(
        self, context: Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "*":
            _check_product(left, right)
        elif operator == "+":
            _check_concatenation(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, _TEXT_TYPES):
            _check_percent_format(left, right, "'%'")
        return super().call_binop(context, operator, left, right)

    def call(
        self, context: Context, function: Any, /, *args: Any, **kwargs: Any
    ) -> Any:
        args = _checked_method_arguments(function, args, kwargs)
        return super().call(context, function, *args, **kwargs)

    def concat_operands(self, eval_ctx: EvalContext, operands: tuple) -> str:
        """`a ~ b ~ ...`, refused if the result would pass the prompt limit."""
        num_chars = 0
        for operand in operands:
            num_chars += _printed_size(operand, MAX_PROMPT_CHARS - num_chars)
            _refuse_over_limit(num_chars, "'~'")
        return markup_join(operands) if eval_ctx.autoescape else str_join(operands)

    def output_buffer(self) -> list:
        """A new list for a macro or block to collect its output in."""
        return _CapturedOutput()

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, _TEXT_TYPES) and attr in _PADDING_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of"
                            f" {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # The sandbox would hand back a safe str.format, but it still pads to
        # any width ("{:>9999999999}"); templates have {{ }} and |format.
        if super().wrap_str_format(value) is None:
            return None
        return self.undefined(
            "str.format is not available in prompt templates; use {{ }} or "
            "the format filter",
            exc=SecurityError,
        )


class _StrictUndefined(jinja2.StrictUndefined):
    """Fails wherever it is used, even printed inside a list or dict.

    Jinja prints a list with repr(), and StrictUndefined's repr() answers
    "Undefined", so `{{ [missing] }}` or a refused attribute picked out by
    `map` would reach the prompt as "[Undefined]" instead of failing.
    """

    # The same failure StrictUndefined already raises for str(), len() etc.
    __repr__ = jinja2.StrictUndefined._fail_with_undefined_error

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: Any = None,
        exc: type[jinja2.TemplateRuntimeError] = UndefinedError,
    ) -> None:
        # The error message shows the name with repr(); `{}[xs]`, with xs a
        # list holding one long string many times, would make it enormous.
        if (not isinstance(name, str | int | None)
                and _printed_size(name, _MAX_NAME_CHARS) > _MAX_NAME_CHARS):
            name = f"<a {type(name).__name__} too long to show>"
        super().__init__(hint, obj, name, exc)


@functools.cache
def _environment() -> _PromptEnvironment:
    environment = _PromptEnvironment(
        autoescape=False,
        undefined=_StrictUndefined,
        finalize=_check_printed_value,
        # A prompt is sent as written, final newline included.
        keep_trailing_newline=True,
    )
    environment.globals.clear()
    _limit_filters(environment.filters)
    for name in _TEXT_TESTS:
        environment.tests[name] = _limit_text_value(environment.tests[name], name)
    return environment


def _refuse_unsafe_nodes(tree: nodes.Template) -> None:
    """Refuse what can be told unsafe from the source alone."""
    for node in tree.find_all(nodes.Node):
        problem = _problem(node)
        if problem:
            raise TemplateError(f"line {node.lineno}: {problem}")


def _problem(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        return f"attribute {node.attr!r}: names starting with '_' are not allowed"
    if isinstance(node, nodes.Getitem) and _is_private_name(node.arg):
        return f"item {node.arg.value!r}: names starting with '_' are not allowed"
    if isinstance(node, nodes.Filter) and _filter_reaches_private(node):
        return f"filter {node.name!r}: names starting with '_' are not allowed"

    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name == "self":
        return "'self' is not available in prompt templates"
    if (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name)
            and node.node.name in _DEFAULT_GLOBALS):
        return f"{node.node.name}() is not available in prompt templates"
    if isinstance(node, nodes.Include | nodes.Import | nodes.FromImport
                  | nodes.Extends):
        return "a prompt template cannot include, import or extend another"
    return None


def _filter_reaches_private(node: nodes.Filter) -> bool:
    """Whether `|attr("_x")` or `attribute="a._x"` names a private attribute."""
    names = [arg for arg in node.args[:1] if node.name == "attr"]
    names += [kw.value for kw in node.kwargs if kw.key == "attribute"]
    return any(
        isinstance(name, nodes.Const) and isinstance(name.value, str)
        and any(part.startswith("_") for part in name.value.split("."))
        for name in names
    )


def _is_private_name(node: nodes.Node) -> bool:
    return (isinstance(node, nodes.Const) and isinstance(node.value, str)
            and node.value.startswith("_"))


# Measuring sizes

# What _measure's next() returns once an iterator is used up.
_END = object()


def _printed_size(value: Any, limit: int = MAX_PROMPT_CHARS) -> int:
    """About how many characters `str(value)` has; see _measure."""
    return _measure(value, limit)[0]


def _measure(value: Any, limit: int = MAX_PROMPT_CHARS) -> tuple[int, int, int]:
    """(characters, parts, depth) of `str(value)`, counted without building it.

    A list or dict is counted as Python prints it, each item every time it
    appears, so a list holding one long string a thousand times counts a
    thousand times over. Counting stops soon after passing `limit`; as every
    part prints as at least one character, that bounds the work too.
    """
    if isinstance(value, str):
        return len(value), 1, 0

    num_chars = num_parts = depth = 0
    # One iterator per open container: memory grows with depth, not size.
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack and num_chars <= limit:
        part = next(stack[-1], _END)
        if part is _END:
            stack.pop()
            continue
        num_parts += 1
        depth = max(depth, len(stack) - 1)
        own_chars, children = _own_chars(part, nested=len(stack) > 1)
        num_chars += own_chars
        if children is not None:
            stack.append(children)
    return num_chars, num_parts, depth


def _own_chars(value: Any, nested: bool) -> tuple[int, Iterator[Any] | None]:
    """The characters `value` prints besides its items', and its items.

    Brackets and separators are counted up front, so a container's items
    cost counting time only while there is budget left for them.
    """
    # The common types first, by exact type: isinstance() against the
    # abstract classes below is several times slower.
    kind = type(value)
    if kind is list or kind is tuple:
        return 2 + 2 * len(value), iter(value)
    if kind is dict:
        return 2 + 4 * len(value), itertools.chain.from_iterable(value.items())

    if isinstance(value, str):
        # Inside a container a string prints with quotes (repr).
        return len(value) + (2 if nested else 0), None
    if isinstance(value, bytes | bytearray):
        return len(value) + 14, None  # at most "bytearray(b'...')"
    if value is None or isinstance(value, bool):
        return 5, None
    if isinstance(value, int):
        if value.bit_length() < 64:
            return len(str(value)), None
        # A digit holds more than three bits; one more for the sign.
        return value.bit_length() // 3 + 2, None
    if isinstance(value, float):
        return len(repr(value)), None
    if isinstance(value, Mapping):
        return 2 + 4 * len(value), itertools.chain.from_iterable(value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 2 + 2 * len(value), iter(value)
    if isinstance(value, KeysView | ValuesView | ItemsView):
        # "dict_items([...])"
        return 14 + 2 * len(value), iter(value)
    if isinstance(value, types.MethodType):
        # "<bound method Markup.upper of Markup('...')>" shows its object.
        return 24 + len(value.__qualname__), iter((value.__self__,))
    # Everything else a template can reach (generators, macros, `loop`,
    # built-in methods) prints as a short description.
    return 80, None


def _refuse_over_limit(num_chars: int, what: str) -> None:
    if num_chars > MAX_PROMPT_CHARS:
        raise SecurityError(
            f"{what} can make more than {MAX_PROMPT_CHARS:,} characters, the "
            f"limit for a prompt"
        )


def _check_printed(value: Any, what: str) -> None:
    """Refuse `value` if turning it into text would pass the prompt limit."""
    # Text is as long as it is; a number is bounded by the checks on `*` and
    # `**`. Both are printed far more often than anything else.
    if type(value) not in _SHORT_TYPES:
        _refuse_over_limit(_printed_size(value), what)


def _check_printed_value(value: Any) -> Any:
    """The environment's finalize: every `{{ value }}` passes through here."""
    _check_printed(value, "printing this value")
    return value


def _collect(
    items: Iterable[Any], what: str, separator_chars: int = 2,
    num_chars: int = 0,
) -> list[Any]:
    """`list(items)`, refused as soon as the items would print past the
    prompt limit, each followed by `separator_chars`."""
    collected = []
    for item in items:
        num_chars += _printed_size(item, MAX_PROMPT_CHARS - num_chars)
        num_chars += separator_chars
        _refuse_over_limit(num_chars, what)
        collected.append(item)
    return collected


def _count_any(text: str, characters: str) -> int:
    return sum(text.count(character) for character in characters)


# Operators

def _check_product(left: Any, right: Any) -> None:
    """Refuse `'a' * n` and `[x] * n` beyond the prompt limit, and products
    of integers with more bits than a power may have."""
    if (isinstance(left, int) and isinstance(right, int)
            and left.bit_length() + right.bit_length() > _MAX_POWER_BITS):
        raise SecurityError(f"'*' would make a number of over {_MAX_POWER_BITS:,} bits")

    for sequence, count in ((left, right), (right, left)):
        if not isinstance(count, int) or count <= 1 or not sequence:
            continue
        if isinstance(sequence, _TEXT_TYPES):
            _refuse_over_limit(len(sequence) * count, "'*'")
        elif isinstance(sequence, list | tuple):
            # The brackets are printed once, not once a copy.
            limit = MAX_PROMPT_CHARS // count + 3
            items_chars = _printed_size(sequence, limit) - 2
            _refuse_over_limit(items_chars * count + 2, "'*'")


def _check_concatenation(left: Any, right: Any) -> None:
    """Refuse `a + b` of text, lists or tuples beyond the prompt limit, so
    that adding a value to itself again and again stops there."""
    if isinstance(left, _TEXT_TYPES) and isinstance(right, _TEXT_TYPES):
        _refuse_over_limit(len(left) + len(right), "'+'")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        num_chars = _printed_size(left)
        num_chars += _printed_size(right, MAX_PROMPT_CHARS - num_chars)
        _refuse_over_limit(num_chars, "'+'")


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse integer powers too large to print, e.g. `2 ** 100000`."""
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return
    if exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > _MAX_POWER_BITS:
            raise SecurityError(f"{base} ** {exponent} is too large")


def _check_percent_format(template: Any, arguments: Any, what: str) -> None:
    """Refuse `template % arguments` if the result could pass the prompt
    limit: the template, every width or precision, and every argument it
    prints, a mapping's value once for each time its key is used."""
    if isinstance(template, bytes | bytearray):
        template = template.decode("latin-1")
    mapping = arguments if isinstance(arguments, Mapping) else None
    num_chars = len(template)
    uses_keys = False
    for match in _PERCENT_SPEC.finditer(template):
        if match.group() == "%%":
            continue
        key, width, precision = match.groups()
        for size in (width, precision):
            if size == "*" or (size and int(size) > MAX_PROMPT_CHARS):
                raise SecurityError(
                    f"the width or precision in {match.group()!r} is not allowed"
                )
        num_chars += 2 + max(int(width or 0), int(precision or 0))
        if key is not None and mapping is not None:
            uses_keys = True
            # A key with parentheses in it ("%((a))s") is cut short by the
            # pattern; the whole mapping is then an upper bound.
            value = mapping.get(key, mapping)
            num_chars += _printed_size(value, MAX_PROMPT_CHARS - num_chars)
        _refuse_over_limit(num_chars, what)

    if not uses_keys:
        positional = arguments if isinstance(arguments, tuple) else (arguments,)
        _collect(positional, what, 2, num_chars)


def _check_replace(
    text: Any, old: Any, new: Any, count: Any, what: str
) -> None:
    """Refuse a replace whose result would pass the prompt limit.

    An empty `old` matches before every character and at the end.
    """
    if not all(isinstance(part, str) for part in (text, old, new)):
        if not all(isinstance(part, bytes | bytearray) for part in (text, old, new)):
            return  # replace() itself refuses the mix
    if len(new) <= len(old):
        return
    occurrences = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    _refuse_over_limit(len(text) + occurrences * (len(new) - len(old)), what)


# Methods called from templates

def _checked_method_arguments(
    function: Any, args: tuple, kwargs: Mapping[str, Any]
) -> tuple:
    """Refuse a method call whose result would pass the prompt limit; the
    arguments to call it with (an iterator given to join() comes back as
    the list it was collected into)."""
    owner = getattr(function, "__self__", None)
    name = getattr(function, "__name__", None)

    if isinstance(owner, _TEXT_TYPES):
        if name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            _check_replace(owner, args[0], args[1], count, ".replace()")
        elif name == "join" and args:
            # Markup.join turns items into text, so measure them as printed.
            items = _collect(args[0], ".join()", len(owner))
            return (items, *args[1:])
        elif name == "translate" and args and isinstance(owner, str):
            _check_translate(owner, args[0])
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            _refuse_over_limit(length, ".to_bytes()")
    elif isinstance(owner, list) and name == "index" and args:
        # The error for a missing item shows it with repr().
        _check_printed(args[0], ".index()")
    elif (isinstance(owner, type) and issubclass(owner, Markup)
          and name == "escape" and args):
        _check_printed(args[0], "Markup.escape()")
    return args


def _check_translate(text: str, table: Any) -> None:
    """Refuse str.translate if every character could become the table's
    longest replacement and pass the prompt limit."""
    if isinstance(table, Mapping):
        replacements: Iterable[Any] = table.values()
    elif isinstance(table, list | tuple):
        replacements = table
    else:
        return  # a str or bytes table maps each character to one character
    longest = max(
        (len(item) for item in replacements if isinstance(item, str)), default=1
    )
    _refuse_over_limit(len(text) * longest, ".translate()")


# Filters

def _limit_filters(filters: MutableMapping[str, Callable[..., Any]]) -> None:
    """Wrap Jinja's filters in the checks that bound what they make."""
    del filters["pprint"]
    # Some filters are wrappers choosing between a sync and an async version,
    # taking an eval context the sync one may not. This environment never
    # renders asynchronously, so use the sync ones, whose parameters the
    # checks below go by.
    for name, filter_function in filters.items():
        if getattr(filter_function, "jinja_async_variant", False):
            filters[name] = filter_function.__wrapped__

    for name, argument in _SIZE_ARGUMENTS.items():
        check = functools.partial(_check_size_argument, name, argument)
        filters[name] = _guard_filter(filters[name], check)
    for name in _TEXT_FILTERS:
        filters[name] = _limit_text_value(filters[name], name)
    for name in _COLLECTING_FILTERS:
        check = functools.partial(_collect_lazy_value, name)
        filters[name] = _guard_filter(filters[name], check)
    for name in _CASE_FOLDING_FILTERS:
        check = functools.partial(_check_case_folding, name)
        filters[name] = _guard_filter(filters[name], check)

    checks = {
        "format": _check_format_filter,
        "indent": _check_indent_filter,
        "join": _check_join_filter,
        "replace": _check_replace_filter,
        "sum": _check_sum_filter,
        "tojson": _check_tojson_filter,
        "urlize": _check_urlize_filter,
        "wordwrap": _check_wordwrap_filter,
    }
    for name, check in checks.items():
        filters[name] = _guard_filter(filters[name], check)
    filters["map"] = _limit_map(filters["map"])


def _guard_filter(
    filter_function: Callable[..., Any],
    check: Callable[[_FilterArguments], None],
) -> Callable[..., Any]:
    """Wrap a filter so `check` sees its arguments, by parameter name, before
    it runs. The check refuses by raising, or swaps an argument (a lazy
    iterable for the list it was collected into)."""
    parameters = {
        name: (position, parameter) for position, (name, parameter)
        in enumerate(inspect.signature(filter_function).parameters.items())
    }

    @functools.wraps(filter_function)  # keeps Jinja's pass_* marker
    def guarded(*args: Any, **kwargs: Any) -> Any:
        arguments = _FilterArguments(parameters, args, kwargs)
        check(arguments)
        return filter_function(*arguments.args, **arguments.kwargs)

    return guarded


class _FilterArguments:
    """A filter call's arguments, read and replaced by parameter name.

    inspect.Signature.bind() does this too, but costs tens of microseconds,
    and a filter in a loop runs once an iteration.
    """

    def __init__(
        self, parameters: Mapping[str, tuple[int, inspect.Parameter]],
        args: tuple, kwargs: dict[str, Any],
    ) -> None:
        self._parameters = parameters
        self.args = list(args)
        self.kwargs = kwargs

    def __getitem__(self, name: str) -> Any:
        position, parameter = self._parameters[name]
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return tuple(self.args[position:])
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return {key: value for key, value in self.kwargs.items()
                    if key not in self._parameters}
        if position < len(self.args):
            return self.args[position]
        default = parameter.default
        return self.kwargs.get(name, None if default is parameter.empty else default)

    def __setitem__(self, name: str, value: Any) -> None:
        position, _ = self._parameters[name]
        if position < len(self.args):
            self.args[position] = value
        else:
            self.kwargs[name] = value


def _limit_text_value(
    function: Callable[..., Any], name: str
) -> Callable[..., Any]:
    """Wrap a filter or test that calls str() on its value."""
    # A pass_environment (or _context) filter gets that before its value.
    position = 1 if hasattr(function, "jinja_pass_arg") else 0

    @functools.wraps(function)
    def limited(*args: Any, **kwargs: Any) -> Any:
        if len(args) > position:
            _check_printed(args[position], name)
        return function(*args, **kwargs)

    return limited


def _limit_map(map_filter: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `map` so that, applying a filter, it makes at most a prompt's
    worth of new values in all.

    What consumes a map may keep every value (`list`, `loop.length`,
    `f(*values)`), and each can be as large as the filter allows.
    `map(attribute=...)` hands out values that already exist, so it is left
    as it is.
    """

    @functools.wraps(map_filter)
    def limited(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        values = map_filter(context, value, *args, **kwargs)
        return _limit_yield(values, "map") if args else values

    return limited


def _limit_yield(values: Iterable[Any], what: str) -> Iterator[Any]:
    num_chars = 0
    for value in values:
        num_chars += _printed_size(value, MAX_PROMPT_CHARS - num_chars)
        _refuse_over_limit(num_chars, what)
        yield value


def _check_size_argument(
    name: str, argument: str, arguments: _FilterArguments
) -> None:
    size = arguments[argument]
    if isinstance(size, int) and size > MAX_PROMPT_CHARS:
        raise SecurityError(f"{name}({argument}={size:,}) exceeds the prompt limit")


def _collect_lazy_value(name: str, arguments: _FilterArguments) -> None:
    # A list or string given to these already exists, and copying it costs a
    # pointer an item; an iterator's items may be made as it is read.
    if isinstance(arguments["value"], Iterator):
        arguments["value"] = _collect(arguments["value"], name)


def _check_case_folding(name: str, arguments: _FilterArguments) -> None:
    if not arguments["case_sensitive"]:
        _check_printed(arguments["value"], name)


def _check_format_filter(arguments: _FilterArguments) -> None:
    value = arguments["value"]
    _check_printed(value, "format")
    format_arguments = arguments["kwargs"] or arguments["args"]
    _check_percent_format(str(value), format_arguments, "format")


def _check_indent_filter(arguments: _FilterArguments) -> None:
    text, width = arguments["s"], arguments["width"]
    if not isinstance(text, str):
        return
    if isinstance(width, str):
        indention_chars = len(width)
    else:
        indention_chars = width if isinstance(width, int) else 0
    # One indention per line, and one more for `first`.
    num_lines = _count_any(text, _LINE_BREAKS) + 1
    size = len(text) + (num_lines + 1) * max(indention_chars, 0)
    _refuse_over_limit(size, "indent")


def _check_join_filter(arguments: _FilterArguments) -> None:
    separator = arguments["d"]
    _check_printed(separator, "join")

    items = arguments["value"]
    if arguments["attribute"] is not None:
        environment = arguments["eval_ctx"].environment
        items = map(make_attrgetter(environment, arguments["attribute"]), items)
        arguments["attribute"] = None
    arguments["value"] = _collect(items, "join", len(str(separator)))


def _check_replace_filter(arguments: _FilterArguments) -> None:
    text, old, new = arguments["s"], arguments["old"], arguments["new"]
    for part in (text, old, new):
        _check_printed(part, "replace")
    count = arguments["count"]
    _check_replace(str(text), str(old), str(new), count, "replace")


def _check_sum_filter(arguments: _FilterArguments) -> None:
    start = arguments["start"]
    if not isinstance(start, list | tuple):
        return  # numbers: the sum is one number
    items = arguments["iterable"]
    if arguments["attribute"] is not None:
        environment = arguments["environment"]
        items = map(make_attrgetter(environment, arguments["attribute"]), items)
        arguments["attribute"] = None
    arguments["iterable"] = _collect(items, "sum", num_chars=_printed_size(start))


def _check_tojson_filter(arguments: _FilterArguments) -> None:
    num_chars, num_parts, depth = _measure(arguments["value"])
    _refuse_over_limit(num_chars, "tojson")

    indent = arguments["indent"]
    if isinstance(indent, str):
        indent_chars = len(indent)
    else:
        indent_chars = indent if isinstance(indent, int) else 0
    if indent_chars > 0:
        # Indented, every part starts a line indented once per level.
        line_chars = 1 + indent_chars * (depth + 1)
        _refuse_over_limit(num_chars + num_parts * line_chars, "tojson")


def _check_urlize_filter(arguments: _FilterArguments) -> None:
    value, rel, target = arguments["value"], arguments["rel"], arguments["target"]
    for part in (value, target):
        _check_printed(part, "urlize")
    text = str(value)

    # Every link repeats rel, which also gets "noopener nofollow", and
    # target, both escaped: up to 5 characters for each one.
    rel_chars = len(rel) + 17 if isinstance(rel, str) else 17
    target_chars = _printed_size(target) if target is not None else 0
    link_chars = _LINK_OVERHEAD_CHARS + 5 * (rel_chars + target_chars)
    num_links = _count_any(text, _LINK_MARKS)
    _refuse_over_limit(len(text) + num_links * link_chars, "urlize")


def _check_wordwrap_filter(arguments: _FilterArguments) -> None:
    text, width = arguments["s"], arguments["width"]
    wrapstring = arguments["wrapstring"] or "\n"
    if not (isinstance(text, str) and isinstance(wrapstring, str)
            and isinstance(width, int)):
        return
    # A one-character wrapstring replaces the space it breaks at, or splits
    # a word; either way the text at most doubles.
    if len(wrapstring) <= 1:
        return

    # A line ends at a space or hyphen (each a chunk boundary, and a run of
    # spaces has two), inside a word too long for a line (after `width`
    # characters), or where the text already had a line break.
    num_breaks = min(
        len(text),
        2 * _count_any(text, _WRAP_POINTS)
        + len(text) // max(width, 1)
        + _count_any(text, _LINE_BREAKS),
    )
    _refuse_over_limit(len(text) + num_breaks * len(wrapstring), "wordwrap")


def _where(error: BaseException) -> str:
    """`line N: ` for the template line an error was raised on, if known."""
    line = None
    for frame, line_number in traceback.walk_tb(error.__traceback__):
        # Jinja rewrites tracebacks so a template's frames carry its lines.
        if frame.f_code.co_filename == "<template>":
            line = line_number
    return f"line {line}: " if line else ""
