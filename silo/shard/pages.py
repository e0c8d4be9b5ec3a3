"""GroupedPages: the in-memory part of a table whose rows are grouped and paged per group.

Ready tasks (grouped by task group) and parked concurrency requests (grouped by queue) are
both read in key order within their group: priority, then due time. A
:class:`GroupedPages` holds, for each group, its first rows in memory and only counts the
others (see :class:`silo.shard.mirror.ShardMirror`, "Group pages"):

- a group with an entry in :attr:`GroupedPages.frontiers` holds in memory exactly its stored
  rows (pending batches included) with key <= its frontier; a group without one holds all;
- :attr:`GroupedPages.stored` counts every stored row of a group, in memory or not;
- :meth:`GroupedPages.page` (where an operation starts, shard lock held) reads a group's next
  page while it has rows on disk only and fewer than ``page_rows`` in memory, and drops a
  group's latest rows past ``memory_rows``; :meth:`GroupedPages.page_in` reads one page on
  demand in the middle of an operation (it only adds rows, so nothing the operation holds
  leaves memory);
- like every mirror, it changes otherwise only by the key writes of submitted batches
  (:meth:`GroupedPages.apply`), so it cannot drift from the stored table.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sortedcontainers import SortedDict

from silo.model import CorruptRecord, Task
from silo.runtime.disk import KVStore
from silo.shard.store import ShardStore

__all__ = ["GroupPaging", "GroupedPages", "decode_page", "read_page"]

G = TypeVar("G", bound=Hashable)


@dataclass(frozen=True)
class GroupPaging:
    """How many rows of each group are held in memory.

    ``page_rows``: rows one page-in of a group reads; fewer than this of a group in memory (with
    more of it on disk) reads its next page. ``memory_rows``: past this many of one group, its
    latest rows are dropped from memory down to ``memory_rows - page_rows``.
    """

    page_rows: int
    memory_rows: int

    def __post_init__(self) -> None:
        if self.page_rows < 1 or self.memory_rows < 2 * self.page_rows:
            raise ValueError(f"invalid group paging {self}")


async def read_page(
    store: ShardStore, start: bytes, end: bytes, page_rows: int
) -> tuple[bytes | None, dict[bytes, bytes], list[tuple[bytes, int, bool]]]:
    """One page of the rows stored from ``start`` (pending batches included): the last key of
    the page read from disk (None: the range ends within the page), the rows up to it, and the
    pending writes merged into them as ``(key, batch, whether it removed a row)``."""
    pending = store.pending(start, end)
    base = await store.kv.scan(start, end, limit=page_rows)
    # Batches submitted during the scan are newer than what it read; an entry made durable
    # meanwhile keeps its newest value here.
    pending.update(store.pending(start, end))
    after = base[-1][0] if len(base) >= page_rows else None
    rows: dict[bytes, bytes] = dict(base)
    merged: list[tuple[bytes, int, bool]] = []
    for k, (seq, v) in sorted(pending.items()):
        if after is not None and k > after:
            continue
        if v is None:
            if rows.pop(k, None) is not None:
                merged.append((k, seq, True))
        else:
            rows[k] = v
            merged.append((k, seq, False))
    return after, rows, merged


def decode_page(
    rows: dict[bytes, bytes], skip_first: bool, corrupt: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, Task]]:
    """The tasks of a page read back, in key order; a row that cannot be decoded goes to
    ``corrupt`` instead. ``skip_first``: the planted bug of a page-in that skips its first row
    (for the simulator)."""
    out: list[tuple[bytes, Task]] = []
    for i, (k, v) in enumerate(sorted(rows.items())):
        if skip_first and i == 0:
            continue
        try:
            out.append((k, Task.decode(k, v)))
        except (CorruptRecord, ValueError):
            corrupt.append((k, v))
    return out


class GroupedPages(Generic[G]):
    """The rows of one table (key prefix ``prefix``) held in memory, per group.

    ``group_of(key, task)`` names a row's group (``task`` is its decoded row, or None for a
    delete); ``group_range(group)`` gives ``[start, end)`` of the group's keys. Without
    ``paging`` every row is held. ``skip_mutation`` names the planted bug that makes a page-in
    skip its first row.
    """

    def __init__(
        self,
        prefix: bytes,
        group_of: Callable[[bytes, Task | None], G],
        group_range: Callable[[G], tuple[bytes, bytes]],
        paging: GroupPaging | None,
        skip_mutation: str,
        corrupt: list[tuple[bytes, bytes]],
    ) -> None:
        self.prefix = prefix
        self.group_of = group_of
        self.group_range = group_range
        self.paging = paging
        self.skip_mutation = skip_mutation
        self.rows: SortedDict = SortedDict()
        """Key -> Task, the rows in memory."""
        self.stored: dict[G, int] = {}
        """Group -> how many rows it has stored (in memory or not)."""
        self.in_memory: dict[G, int] = {}
        """Group -> how many of its rows are in memory."""
        self.frontiers: dict[G, bytes] = {}
        """Group -> the last of its keys held in memory (absent: all are)."""
        self._to_page: set[G] = set()
        """Groups that may need a page-in or page-out at the next :meth:`page`."""
        self.loading = False
        self.mutation: Callable[[str], bool] = lambda name: False
        self.on_added: Callable[[G], None] = lambda group: None
        self.corrupt = corrupt
        """Where rows that cannot be decoded go (left out, not counted; the shard quarantines
        them): the mirror's list."""

    @property
    def total(self) -> int:
        """How many rows are stored, in memory or not."""
        return sum(self.stored.values())

    # -- lookups ----------------------------------------------------------------------------

    def beyond(self, k: bytes) -> bool:
        """Whether ``k`` is beyond its group's frontier (on disk only, if stored)."""
        if not self.frontiers or k in self.rows:
            return False
        frontier = self.frontiers.get(self.group_of(k, None))
        return frontier is not None and k > frontier

    def lookup(self, k: bytes) -> Task | None | bool:
        """The row ``k`` in memory; None when there is surely none; False when ``k`` is beyond
        its group's frontier (read the store)."""
        task = self.rows.get(k)
        if task is not None:
            return task  # type: ignore[no-any-return]
        return False if self.beyond(k) else None

    def keys_beyond(self, ops: list[tuple[bytes, bytes | None]]) -> list[bytes]:
        """The keys of ``ops`` in this table beyond their group's frontier: :meth:`apply` needs
        to be told which of them are stored to keep :attr:`stored`."""
        if not self.frontiers:
            return []
        return [k for k, _ in ops if k[:1] == self.prefix and self.beyond(k)]

    # -- key writes ---------------------------------------------------------------------------

    def apply(
        self, k: bytes, v: bytes | None, beyond_stored: frozenset[bytes] | set[bytes]
    ) -> None:
        """One put or delete of a submitted batch (or a loaded row); ``beyond_stored`` says
        which keys beyond their frontier were stored before the batch."""
        if v is None:
            task = self.rows.pop(k, None)
            if task is not None:
                self._count(self.group_of(k, task), -1, in_memory=True)
            elif self.beyond(k) and k in beyond_stored:
                self._count(self.group_of(k, None), -1, in_memory=False)
            return
        task = Task.decode(k, v)
        group = self.group_of(k, task)
        frontier = self.frontiers.get(group)
        if frontier is not None and k > frontier:
            if k not in beyond_stored:
                self._count(group, 1, in_memory=False)
        else:
            if k not in self.rows:
                self._count(group, 1, in_memory=True)
            self.rows[k] = task
        self.on_added(group)

    def _count(self, group: G, delta: int, *, in_memory: bool) -> None:
        """Count a row of ``group`` stored (+1) or removed (-1), in memory or not, and note the
        group for :meth:`page` when it crosses a paging bound."""
        n = self.stored.get(group, 0) + delta
        assert n >= 0, f"rows of {group!r} counted below zero"
        if n:
            self.stored[group] = n
        else:
            self.stored.pop(group, None)
        held = self.in_memory.get(group, 0)
        if in_memory:
            held += delta
            if held:
                self.in_memory[group] = held
            else:
                self.in_memory.pop(group, None)
        paging = self.paging
        if paging is not None and not self.loading and (
            held > paging.memory_rows
            or (held < paging.page_rows and group in self.frontiers)
        ):
            self._to_page.add(group)

    # -- paging -------------------------------------------------------------------------------

    async def load(self, kv: KVStore, end: bytes) -> None:
        """Load the first ``page_rows`` rows of every group (every row without paging), counting
        the others. Rows that cannot be decoded go to :attr:`corrupt`."""
        page = self.paging.page_rows if self.paging is not None else 10_000
        start = self.prefix
        self.loading = True
        try:
            while True:
                rows = await kv.scan(start, end, limit=page)
                resume: bytes | None = None
                for k, v in rows:
                    try:
                        self.apply(k, v, frozenset())
                    except (CorruptRecord, ValueError):  # ValueError: a malformed key
                        self.corrupt.append((k, v))
                        continue
                    if self.paging is None:
                        continue
                    group = self.group_of(k, self.rows[k])
                    if self.in_memory.get(group, 0) >= page:
                        _, group_end = self.group_range(group)
                        more = await kv.count_keys(k + b"\x00", group_end)
                        if more:
                            self.frontiers[group] = k
                            self.stored[group] += more
                        resume = group_end
                        break
                if resume is None:
                    if len(rows) < page:
                        break
                    resume = rows[-1][0] + b"\x00"
                start = resume
        finally:
            self.loading = False
        self._to_page.clear()

    async def page(self, store: ShardStore) -> None:
        """Page every noted group in and out (see the module docstring)."""
        paging = self.paging
        if paging is None or not self._to_page:
            return
        groups = sorted(self._to_page)  # type: ignore[type-var]
        self._to_page.clear()
        for group in groups:
            while group in self.frontiers and self.in_memory.get(group, 0) < paging.page_rows:
                await self.page_in(store, group)
            self._page_out(group)

    async def page_in(self, store: ShardStore, group: G) -> None:
        """Read the next page of ``group`` into memory (it must have a frontier)."""
        assert self.paging is not None
        _, end = self.group_range(group)
        after, rows, _ = await read_page(
            store, self.frontiers[group] + b"\x00", end, self.paging.page_rows
        )
        if after is None:
            del self.frontiers[group]
        else:
            self.frontiers[group] = after
        corrupt = len(self.corrupt)
        for k, task in decode_page(rows, self.mutation(self.skip_mutation), self.corrupt):
            self.rows[k] = task
            self.in_memory[group] = self.in_memory.get(group, 0) + 1
        for _ in range(len(self.corrupt) - corrupt):
            self._count(group, -1, in_memory=False)  # as at a load: a row set aside is not counted

    def _page_out(self, group: G) -> None:
        """Drop the latest rows of ``group`` from memory while it holds more than
        ``memory_rows``: down to ``memory_rows - page_rows``."""
        paging = self.paging
        assert paging is not None
        held = self.in_memory.get(group, 0)
        if held <= paging.memory_rows:
            return
        keep = paging.memory_rows - paging.page_rows
        group_start, _ = self.group_range(group)
        first = self.rows.bisect_left(group_start)
        for k in list(self.rows.islice(first + keep, first + held)):
            del self.rows[k]
        self.frontiers[group] = self.rows.peekitem(first + keep - 1)[0]
        self.in_memory[group] = keep
