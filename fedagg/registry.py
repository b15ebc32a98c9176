"""One small registry type for every pluggable family (aggregators, datasets,
partitions, participation patterns, heterogeneity models): register by name,
list the choices, and fail with the config key and the valid choices."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: str) -> None:
        self.key = key  # the config key that selects an entry, e.g. "dataset.name"
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.key}: '{name}' registered twice")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def available(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"{self.key}='{name}' is not known; valid choices: {', '.join(self.available())}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items
