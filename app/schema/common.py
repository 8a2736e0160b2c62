"""Types every part of the API shares: pages of things (Relay connections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Generic, TypeVar

import strawberry

from app import ids
from app.errors import BadUserInput

Node = TypeVar("Node")
Row = TypeVar("Row")

DEFAULT_PAGE_SIZE = 50

# The arguments every paged field takes.
First = Annotated[int | None, strawberry.argument(
    description=f"Page size (default {DEFAULT_PAGE_SIZE}; at most"
    " ASSAY_MAX_PAGE_SIZE, 500 unless the server sets another).")]
After = Annotated[str | None, strawberry.argument(
    description="Cursor of the item after which the page starts.")]


@strawberry.type(description="Where a page stands in the whole list.")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="Whether more items follow this page.")
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on an empty page.")


@strawberry.type(description="One item of a page, with the cursor that points at it.")
class Edge(Generic[Node]):
    node: Node = strawberry.field(description="The item.")
    cursor: str = strawberry.field(
        description="Pass as `after` to get the items that follow this one.")


@strawberry.type(description="A page of a list, in a stable order.")
class Connection(Generic[Node]):
    edges: list[Edge[Node]] = strawberry.field(description="The items of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page stands.")
    total_count: int = strawberry.field(
        description="How many items the whole list holds, with the same filters.")


def page_size(first: int | None, maximum: int) -> int:
    """The validated `first` argument; how many items a page may hold."""
    if first is None:
        return min(DEFAULT_PAGE_SIZE, maximum)
    if first < 0 or first > maximum:
        raise BadUserInput(f"first: must be between 0 and {maximum}, got {first}")
    return first


def build_connection(
    rows: Sequence[Row],
    first: int,
    total_count: int,
    position: Callable[[Row], int],
    to_node: Callable[[Row], Node],
) -> Connection[Node]:
    """A page from `first + 1` fetched rows: the extra row only tells that
    another page follows."""
    shown = rows[:first]
    edges = [Edge(node=to_node(row), cursor=ids.encode_cursor(position(row)))
             for row in shown]
    return Connection(
        edges=edges,
        page_info=PageInfo(has_next_page=len(rows) > first,
                           end_cursor=edges[-1].cursor if edges else None),
        total_count=total_count,
    )
