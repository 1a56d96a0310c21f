"""Name -> implementation, one registry per config key (propose.proposer, rank.ranker,
evaluate.evaluator): a variant is a small class registered under the name users write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from visdiff.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one config key.

    >>> shapes: Registry[type] = Registry("shape.kind")
    >>> @shapes.register("square")
    ... class Square: ...
    >>> shapes.get("square").__name__, shapes.names()
    ('Square', ('square',))
    >>> shapes.get("circle")
    Traceback (most recent call last):
    ...
    visdiff.errors.ConfigError: config key 'shape.kind' = 'circle' has no implementation; registered: square
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.key}: '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"config key '{self.key}' = '{name}' has no implementation; "
                f"registered: {', '.join(self.names())}"
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)
