"""Work started now and collected later, on a daemon thread: a call that may never be
collected (its run stopped meanwhile) must not hold the process open at exit, as a
concurrent.futures pool's thread would."""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, Tuple, TypeVar

T = TypeVar("T")


class InBackground(Generic[T]):
    """fn(*args) running on its own daemon thread; result() waits for it and returns what it
    returned, or raises what it raised."""

    def __init__(self, fn: Callable[..., T], *args: Any, name: str = "daskinfer-background"):
        self.done = threading.Event()
        self._outcome: Tuple[bool, Any] = (False, None)
        threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True).start()

    def _run(self, fn: Callable[..., T], args: Tuple[Any, ...]) -> None:
        try:
            self._outcome = (True, fn(*args))
        except BaseException as exc:  # handed to the thread that collects it
            self._outcome = (False, exc)
        finally:
            self.done.set()

    def result(self) -> T:
        self.done.wait()
        ok, value = self._outcome
        if not ok:
            raise value
        return value
