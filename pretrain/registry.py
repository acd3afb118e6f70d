"""String-keyed registries: the only place a name becomes a model, objective or data op.

A registry refuses duplicate names (two objectives silently shadowing each other is a bug
that shows up as a wrong loss curve weeks later) and lists the valid names when a lookup
fails, so a typo in a config is a one-line error before anything compiles.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects of one kind (e.g. objectives)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@OBJECTIVES.register("mlm")`."""

    def add(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._items[name] = obj
      return obj

    return add

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise KeyError(
          f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
      ) from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items


OBJECTIVES: Registry[Any] = Registry("objective")
MODELS: Registry[Any] = Registry("model")
