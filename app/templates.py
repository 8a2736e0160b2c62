"""Prompt templates: the Jinja-style text that turns a test case's input
variables into the prompt sent to the model, e.g. `"Q: {{ question }}\\nA:"`.

Templates come from API users, so they are treated as untrusted code:

- They run in Jinja's immutable sandbox, which refuses attributes that lead
  to Python internals and methods that change data.
- The environment has no globals, so `range`, `lipsum`, `cycler`, `joiner`,
  `namespace` and `dict` do not exist; calling one is refused when the
  template is compiled.
- Attribute and item names starting with `_`, `self`, and `include`,
  `import` and `extends` are refused when the template is compiled; anything
  that gets past that meets the sandbox at render time.
- A number in the template cannot make one operation allocate more than the
  prompt limit (`'a' * 10**9`, `2 ** 100000`, `"%9999999999d" % 1`,
  `center(10**9)`), and rendering stops as soon as the prompt passes
  MAX_PROMPT_CHARS.

Known shortcoming: strings grown by combining them, such as a `{% set %}`
that doubles a variable forty times, or loops that write nothing, are not
bounded before the output limit applies, so a hostile template can still
spend a worker's memory or time. That stops mattering once prompts are
rendered in a child process with memory and time limits.
"""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 100_000
MAX_PROMPT_CHARS = 1_000_000
# 2 ** 4096 already has over 1,200 digits; nothing a prompt needs is larger.
_MAX_POWER_BITS = 4_096

# The globals a default Jinja environment has. Ours has none, so these are
# plain variables, and calling one can only be a mistake or an attack.
_DEFAULT_GLOBALS = frozenset(
    {"range", "lipsum", "cycler", "joiner", "namespace", "dict"}
)
# str methods that pad to any width they are given.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
# Filters whose named argument is a count of characters or items to produce.
_SIZE_ARGUMENTS = {
    "center": "width",
    "indent": "width",
    "batch": "linecount",
    "slice": "slices",
}
# The widths and precisions in a %-format, e.g. "10" and "2" in "%10.2f";
# "%%" is a literal percent sign, matched first so it is skipped.
_PERCENT_SPEC = re.compile(
    r"%%|%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?"
)


class TemplateError(ValueError):
    """The template cannot be used; `str()` says what is wrong and where
    (`line N: ...` when the line is known)."""


@dataclass(frozen=True)
class PromptTemplate:
    """A compiled prompt template; compile once, render for every test case.

    `variables` holds the top-level variables the template reads, so a test
    set can be checked against it before an evaluation starts.
    """

    source: str
    variables: frozenset[str]
    _template: jinja2.Template = field(repr=False, compare=False)

    def render(self, variables: Mapping[str, Any]) -> str:
        """The prompt for one test case's input variables.

        Raises TemplateError for a missing variable, a refused operation or a
        prompt over MAX_PROMPT_CHARS characters, naming it and its line.
        """
        chunks: list[str] = []
        num_chars = 0
        stream = self._template.generate(variables)
        try:
            for chunk in stream:
                num_chars += len(chunk)
                if num_chars > MAX_PROMPT_CHARS:
                    raise TemplateError(
                        f"the rendered prompt is longer than the limit of "
                        f"{MAX_PROMPT_CHARS:,} characters"
                    )
                chunks.append(chunk)
        except TemplateError:
            raise
        except jinja2.UndefinedError as error:
            raise TemplateError(f"{_where(error)}missing variable: {error}") from None
        except SecurityError as error:
            raise TemplateError(f"{_where(error)}not allowed: {error}") from None
        except Exception as error:
            # The template is user code: whatever it raises (a division by
            # zero, adding text to a number) is the template's fault.
            raise TemplateError(
                f"{_where(error)}{type(error).__name__}: {error}"
            ) from error
        finally:
            stream.close()
        return "".join(chunks)


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

    return PromptTemplate(source=source, variables=variables, _template=template)


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus limits on the operations a number can blow up."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(
        self, context: Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif isinstance(left, str):
            _check_percent_format(left)
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _PADDING_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

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


@functools.cache
def _environment() -> _PromptEnvironment:
    environment = _PromptEnvironment(
        autoescape=False,
        undefined=_StrictUndefined,
        # A prompt is sent as written, final newline included.
        keep_trailing_newline=True,
    )
    environment.globals.clear()
    for name, argument in _SIZE_ARGUMENTS.items():
        environment.filters[name] = _limit_size(
            environment.filters[name], name, argument
        )
    environment.filters["format"] = _limit_format(environment.filters["format"])
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


def _check_repeat(left: Any, right: Any) -> None:
    """Refuse `'a' * n` and `[x] * n` beyond the prompt limit."""
    for sequence, count in ((left, right), (right, left)):
        if (isinstance(sequence, str | list | tuple) and isinstance(count, int)
                and len(sequence) * count > MAX_PROMPT_CHARS):
            raise SecurityError(
                f"'*' would make {len(sequence) * count:,} characters or items, "
                f"over the prompt limit"
            )


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse integer powers too large to print, e.g. `2 ** 100000`."""
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return
    if exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > _MAX_POWER_BITS:
            raise SecurityError(f"{base} ** {exponent} is too large")


def _check_percent_format(template: str) -> None:
    """Refuse %-format widths over the prompt limit, or given by `*`."""
    for match in _PERCENT_SPEC.finditer(template):
        for size in match.groups():
            if size == "*" or (size and int(size) > MAX_PROMPT_CHARS):
                raise SecurityError(
                    f"the width or precision in {match.group()!r} is not allowed"
                )


def _limit_size(
    filter_function: Callable[..., Any], name: str, argument: str
) -> Callable[..., Any]:
    """Wrap a filter so its size `argument` cannot exceed the prompt limit."""
    # A pass_environment (or _context) filter gets that before its value; the
    # size comes right after the value, or by name.
    position = 2 if hasattr(filter_function, "jinja_pass_arg") else 1

    @functools.wraps(filter_function)  # keeps Jinja's pass_* marker
    def limited(*args: Any, **kwargs: Any) -> Any:
        size = args[position] if len(args) > position else kwargs.get(argument)
        if isinstance(size, int) and size > MAX_PROMPT_CHARS:
            raise SecurityError(
                f"{name}({argument}={size:,}) exceeds the prompt limit"
            )
        return filter_function(*args, **kwargs)

    return limited


def _limit_format(format_filter: Callable[..., str]) -> Callable[..., str]:
    """Wrap the %-style format filter with the same width check as `%`."""

    @functools.wraps(format_filter)
    def limited(value: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            _check_percent_format(value)
        return format_filter(value, *args, **kwargs)

    return limited


def _where(error: BaseException) -> str:
    """`line N: ` for the template line an error was raised on, if known."""
    line = None
    for frame, line_number in traceback.walk_tb(error.__traceback__):
        # Jinja rewrites tracebacks so a template's frames carry its lines.
        if frame.f_code.co_filename == "<template>":
            line = line_number
    return f"line {line}: " if line else ""
