"""One kind of registry for everything chosen by name: models, datasets, samplers, pruners."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from autoprune.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to things of one ``kind``: filled by :meth:`register` (a decorator), read by
    :meth:`get`, which refuses an unknown name with the valid ones (and ``hint``, if given)."""

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint  # said after the valid names: other ways to name one
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds its target under ``name``."""

        def add(thing: T) -> T:
            self._items[name] = thing
            return thing

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            hint = f", {self.hint}" if self.hint else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self)}{hint}"
            )
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:  # sorted names
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return list(self)
