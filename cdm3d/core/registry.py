"""Name -> class registries, resolved from a config's ``type:`` field.

Built-in and third-party plugins register through the ``cdm3d.stages`` entry
point group, which is read lazily on the first unknown name, so the core never
imports a plugin module by name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

from cdm3d.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of classes by name.

    Args:
        kind: what the registry holds, for error messages ("stage").
        entry_point_group: entry points consulted for names not yet registered.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            current = self._items.get(name)
            if current is not None and current is not obj:
                raise ConfigError(f"{self.kind} type {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self.entry_point_group is None:
            return {}
        return {ep.name: ep for ep in metadata.entry_points(group=self.entry_point_group)}

    def get(self, name: str) -> T:
        if name not in self._items:
            ep = self._entry_points().get(name)
            if ep is not None:
                # Loading the module runs its @register decorator; the entry
                # point's own object is the fallback for plain classes.
                try:
                    obj = ep.load()
                except Exception as err:  # a broken plugin must not end in a bare traceback
                    raise ConfigError(
                        f"{self.kind} type {name!r} is provided by {ep.value}, which fails to load: {err}"
                    ) from None
                self._items.setdefault(name, obj)
        if name not in self._items:
            known = ", ".join(sorted(self.names())) or "none"
            raise ConfigError(f"unknown {self.kind} type {name!r}; known types: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._entry_points()))

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ConfigError:
            return False
        return True


STAGES: Registry = Registry("stage", entry_point_group="cdm3d.stages")
