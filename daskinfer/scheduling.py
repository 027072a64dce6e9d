"""How units become tasks on the cluster: submitted in output order with decreasing
priority, a bounded window ahead of the writer, their results handed back in order while
the workers are watched. This is what lets one driver write one ordered file from the
first seconds on, with flat memory, whatever order the workers finish in."""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import uuid
from concurrent.futures import CancelledError
from typing import Any, Iterable, Iterator, List, Optional, Tuple

from omegaconf import DictConfig

from daskinfer import cluster, predict, records
from daskinfer.cluster import adaptive
from daskinfer.background import InBackground
from daskinfer.errors import WorkersDied, first_line
from daskinfer.units import NOT_YET, Unit

log = logging.getLogger("daskinfer")


def planned_threads(client: Any, cfg: DictConfig) -> int:
    """The threads the run will have: those of the workers now, or, on an adaptive
    cluster, of cluster.adapt.maximum workers shaped like them."""
    nthreads = client.nthreads()
    if not adaptive(cfg) or not cfg.adapt.maximum:
        return sum(nthreads.values()) or 1
    per_worker = sum(nthreads.values()) / len(nthreads) if nthreads else cfg.threads_per_worker or 1
    return max(1, round(cfg.adapt.maximum * per_worker))


def tasks_ahead(threads: int, cfg: DictConfig) -> int:
    """How many units to keep submitted ahead of the one being written.

    Two per thread keeps every thread busy while bounding what the driver and the
    scheduler hold. Adaptive scaling asks for workers in proportion to the work it sees
    queued (a worker per distributed.adaptive.target-duration, 5 s, of it), so an
    adaptive cluster is shown more.
    """
    return max(32, 4 * threads) if adaptive(cfg) else 2 * threads + 2


def _died(key: str) -> records.PartitionResult:
    """The result of a document whose workers died each time they scored it alone."""
    entry = records.error_entry(key, "KilledWorker: every worker that scored this document in a task of its own "
                                "died (out of memory?); inference.max_document_bytes can leave such documents out",
                                transient=True)
    return records.PartitionResult(None, records.jsonl([entry]), 0, 1, None, "", records.stats([], [entry]))


# Units without a task (carried by an incremental run) looked at beyond the window, so
# that the partitions after a long run of carried documents are already being scored
# while the driver copies those documents' lines.
_UNSCORED_AHEAD = 16


class Runner:
    """Scoring tasks on client's workers, watched: a run with no worker left for wait_s
    seconds stops with a clear message instead of waiting for ever."""

    def __init__(self, client: Any, settings: predict.Settings, wait_s: float):
        self.client, self.settings, self.wait_s = client, settings, wait_s
        self._lost_since: Optional[float] = None
        self.submitted = 0
        self._last_look = 0.0
        self._submitting: Optional[str] = None  # the key of a task whose future is not in pending yet

    def in_order(self, units: Iterable[Unit], window: int) -> Iterator[Tuple[Unit, Optional[Any]]]:
        """(unit, its PartitionResult) in unit order, with at most `window` tasks submitted
        ahead of the one being written; a unit with nothing to score gives None.

        Earlier tasks get higher priority, so results reach the output from the first
        seconds on. Units go to the workers as plain tasks (one small pickle each), not
        as a graph. A task whose worker dies is recomputed elsewhere by dask, and still
        written once, here.
        """
        pending: collections.deque = collections.deque()
        try:
            yield from self._in_order(units, window, pending)
        finally:  # a failed or interrupted run: see _cancel
            self._cancel([future for _, future in pending] + self._unrecorded())
            pending.clear()

    def _in_order(self, units: Iterable[Unit], window: int, pending: collections.deque):
        from distributed.scheduler import KilledWorker

        numbered = enumerate(units)
        self.submitted = 0  # units with a task: those done before or carried hold no worker
        exhausted = False
        while True:
            while self.submitted < window and len(pending) < window + _UNSCORED_AHEAD:
                following = next(numbered, None)
                exhausted = following is None
                if exhausted or following[1] is NOT_YET:
                    break
                future = self._submit(*following)
                pending.append((following[1], future))
                self._submitting = None
                self.submitted += future is not None
            if not pending:
                if exhausted:
                    return
                continue
            unit, future = pending.popleft()
            if future is None:
                yield unit, None
                continue
            self.submitted -= 1
            try:
                part = self.result(future)
            except KilledWorker as exc:
                if unit.data:  # a table's rows: the tasks reading them die with the workers too
                    raise WorkersDied(f"workers kept dying while scoring one partition: {first_line(exc)}") from None
                part = self._one_by_one(unit)
            finally:
                future.release()
            yield unit, part

    def _one_by_one(self, unit: Unit) -> records.PartitionResult:
        """The result of a partition of files, its documents scored a task each: its workers
        died scoring it (dask gave up after distributed.scheduler.allowed-failures), most
        likely on one document too long for their memory. That document becomes an error
        entry, and the rest of the unit is scored as usual."""
        singles = unit.piece.singles()
        if len(singles) == 1:  # once more: a death on another task counts against it too
            return self._scored([unit])[0] or _died(singles[0][0])
        log.warning("Workers died scoring %d documents; scoring them one at a time to find the one they die on",
                    len(singles))
        units = [unit._replace(piece=piece) for _, piece in singles]
        by_size = sorted(range(len(units)), key=lambda i: unit.piece.sizes[i])
        parts: List[Optional[records.PartitionResult]] = [None] * len(units)
        # Workers that die on the two shortest documents die on any (a model too big for
        # their memory): the run stops rather than restart them for every document.
        alone = []
        for i in by_size[:2]:
            alone.append(i)
            parts[i] = self._scored([units[i]])[0]
            if parts[i] is not None:
                break
        else:
            raise WorkersDied(f"workers died scoring each of the two shortest documents of a partition alone "
                              f"({singles[by_size[0]][0]}): not enough memory for the model?")
        # A worker's death counts against every task it held: documents queued beside the one
        # it dies on may be given up too. So the likeliest, the longest, goes alone; the rest
        # together; any given up then, alone again.
        if by_size[-1] not in alone:
            alone.append(by_size[-1])
            parts[by_size[-1]] = self._scored([units[by_size[-1]]])[0]
        rest = [i for i in by_size if i not in alone]
        for i, part in zip(rest, self._scored([units[i] for i in rest])):
            parts[i] = part
        for i in rest if len(rest) > 1 else []:
            if parts[i] is None:
                parts[i] = self._scored([units[i]])[0]
        return records.merged([part or _died(key) for part, (key, _) in zip(parts, singles)])

    def _scored(self, units: List[Unit]) -> List[Optional[records.PartitionResult]]:
        """The units' results, all submitted at once; None for one whose workers died."""
        from distributed.scheduler import KilledWorker

        futures, parts = [self._submit(0, unit) for unit in units], []
        self._submitting = None
        try:
            for future in futures:
                try:
                    parts.append(self.result(future))
                except KilledWorker:
                    parts.append(None)
                finally:
                    future.release()
        finally:
            self._cancel(futures[len(parts):])
        return parts

    def _cancel(self, futures: Iterable[Any]) -> None:
        """Cancel the tasks of a run that stops before their turn. Dropping their futures is
        not enough: the exception that stopped the run keeps this frame, and so them, alive
        (a notebook keeps it as sys.last_value), and their tasks would go on holding the user's
        workers, and their results the workers' memory, into the next run. Finished ones too."""
        left = [future for future in futures if future is not None]
        if left:
            with contextlib.suppress(Exception):  # a scheduler already gone has nothing to cancel
                self.client.cancel(left)

    def _unrecorded(self) -> List[Any]:
        """The future of the task being submitted when the run stopped, if any: an interrupt
        (KeyboardInterrupt, raised between any two bytecodes) can land after the scheduler got
        the task and before its future reached pending, and it would run on unseen."""
        from distributed import Future

        key, self._submitting = self._submitting, None
        return [Future(key, self.client)] if key else []

    @property
    def busy(self) -> bool:
        """Whether tasks are out whose results are still to be written."""
        return self.submitted > 0

    def _submit(self, index: int, unit: Unit):
        if unit.piece is None:
            return None
        key = self._submitting = f"daskinfer-partition-{index}-{uuid.uuid4().hex}"
        return self.client.submit(predict.score, unit.piece, self.settings, *unit.data,
                                  priority=-index, pure=False, key=key)

    def result(self, future: Any) -> Any:
        """The future's result, checking the workers every second while it is not there.

        The result is fetched on a helper thread, which waits as long as dask needs: a
        finished result lost with its worker is computed again, and a timeout passed to
        dask's own wait can instead fail with an UnboundLocalError when it ends just as
        the result arrives (dask/distributed#8514). This thread only watches the workers.
        A scheduler that goes away cancels every future, or fails the fetch under way on its
        closed connection: either is a lost scheduler, not a failed document.
        """
        from distributed.comm import CommClosedError  # distributed is imported once a run has a client

        fetch = InBackground(future.result, name="daskinfer-fetch")
        while True:
            self.check()
            if fetch.done.wait(1.0):
                break
        try:
            return fetch.result()
        except (CancelledError, CommClosedError):
            raise ConnectionError(f"lost the dask scheduler at {self.client.scheduler.address}") from None

    def check(self) -> None:
        """Raise once no worker has been connected for wait_s seconds (a run cannot finish
        then; a worker that comes back in time takes the lost work)."""
        now = time.monotonic()
        if now - self._last_look < 1.0:
            return  # asking the scheduler once a second is plenty
        self._last_look = now
        cluster.revive(self.client)
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers")
        except OSError as exc:
            raise ConnectionError(f"lost the dask scheduler: {first_line(exc)}") from None
        if workers:
            self._lost_since = None
            return
        if self._lost_since is None:
            log.warning("No dask worker left: waiting up to %g s for one (cluster.wait_for_workers_s)", self.wait_s)
            self._lost_since = now
        if now - self._lost_since > self.wait_s:
            raise TimeoutError(
                f"no dask worker left for {self.wait_s:g} s (cluster.wait_for_workers_s); the run is incomplete"
            )
