"""Dynamic micro-batching: requests for one engine that arrive while it is busy are answered together by
its next `query_batch` call (one encoder pass), so throughput grows with load instead of queueing one
encoder call per request, and a lone request never waits. Engine calls run on one worker thread per
engine, never two at once."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from indexes.engine import Engine, Query
from indexes.errors import UserError
from indexes.index import Hit


@dataclass
class _Request:
    queries: list[Query]
    k: int
    exclude: list[list[Any]] | None
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Answers requests in batches of up to `max_batch` queries: an idle engine starts on a request at
    once (after `window` seconds, if given, to gather more); requests arriving meanwhile form the next
    batch. Requests with different filters or options go to separate engine calls."""

    def __init__(self, engine: Engine, window: float = 0.0, max_batch: int = 64):
        self.engine = engine
        self.window = window
        self.max_batch = max_batch
        self._pending: dict[str, list[_Request]] = {}
        self._options: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._draining = False
        self._drainer: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{engine.name}")
        self.batches = 0  # engine calls made (for tests and /metrics)

    async def query(self, queries: list[Any], k: int = 10, where: Any = None,
                    exclude: list[list[Any]] | None = None, **options: Any) -> list[list[Hit]]:
        """Answer `queries` (validated now, so one bad request cannot fail the others' batch)."""
        if not queries:
            raise UserError("no queries given")
        if exclude is not None and len(exclude) != len(queries):
            raise UserError(f"{len(exclude)} exclusion lists for {len(queries)} queries")
        prepared = [self.engine.as_query(q) for q in queries]
        key = json.dumps([where, options], sort_keys=True, default=str)
        request = _Request(prepared, k, exclude, asyncio.get_running_loop().create_future())
        self._pending.setdefault(key, []).append(request)
        self._options[key] = (where, options)
        if not self._draining:
            self._draining = True
            self._drainer = asyncio.get_running_loop().create_task(self._drain())  # kept: tasks are weakly held
        return await request.future

    async def _drain(self) -> None:
        """Answer pending requests batch by batch until none is left."""
        try:
            if self.window:
                await asyncio.sleep(self.window)
            while self._pending:
                key = next(iter(self._pending))
                group, rest, size = [], [], 0
                for request in self._pending.pop(key):
                    fits = not group or size + len(request.queries) <= self.max_batch
                    (group if fits else rest).append(request)
                    size += len(request.queries) if fits else 0
                if rest:
                    self._pending[key] = rest
                where, options = self._options[key] if rest else self._options.pop(key)
                await self._answer(group, where, options)
        finally:
            self._draining = False

    async def _answer(self, group: list[_Request], where: Any, options: dict[str, Any]) -> None:
        group = [r for r in group if not r.future.done()]  # callers that gave up (cancelled) are skipped
        if not group:
            return
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._worker, self._run, group, where, options)
        except UserError:  # someone's query is bad: answer each request alone, so only it gets the error
            for request in group:
                try:
                    _settle(request, result=(await loop.run_in_executor(self._worker, self._run, [request], where,
                                                                        options))[0])
                except Exception as err:  # noqa: BLE001 - handed to the waiting request
                    _settle(request, error=err)
            return
        except Exception as err:  # noqa: BLE001 - every waiting request learns of it
            for request in group:
                _settle(request, error=err)
            return
        for request, result in zip(group, results):
            _settle(request, result=result)

    def _run(self, group: list[_Request], where: Any, options: dict[str, Any]) -> list[list[list[Hit]]]:
        """One engine call for the whole group; each request gets its own slice, cut to its own k."""
        self.batches += 1
        queries = [q for r in group for q in r.queries]
        exclude = [e for r in group for e in (r.exclude or [[] for _ in r.queries])]
        hits = self.engine.query_batch(queries, max(r.k for r in group), where=where,
                                       exclude=exclude if any(exclude) else None, **options)
        results, start = [], 0
        for request in group:
            results.append([ranked[:request.k] for ranked in hits[start:start + len(request.queries)]])
            start += len(request.queries)
        return results

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _settle(request: _Request, result: Any = None, error: BaseException | None = None) -> None:
    """Hand a request its answer, unless its caller has stopped waiting (a cancelled future)."""
    if request.future.done():
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(result)
