"""Aggregators: one module per paper, each registering its rule(s) by name.

Every module of this package is imported here (package discovery), so a new
built-in rule is one new module with an ``@register("name")`` class -- no edit
of this file. A user's rule lives in the user's own package and is selected
with ``aggregator._target_=my_pkg.rules.MyRule`` instead.
"""
import importlib
import pkgutil

from .base import (
    Aggregator,
    AggregatorContext,
    ClientUpdate,
    InvalidUpdate,
    Params,
    RoundInfo,
)
from .registry import available, build, get, register

__all__ = ["Aggregator", "AggregatorContext", "ClientUpdate", "InvalidUpdate", "Params", "RoundInfo",
           "available", "build", "get", "register"]

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_mod.name}")
