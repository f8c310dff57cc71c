"""Helpers for the importer tests: write dumps the way the real systems do, and check failures."""

from __future__ import annotations

import collections

import pytest

from datasets_registry.importers import import_path
from datasets_registry.trace import TraceError


class Unsafe:
    """A class that `torch.load(weights_only=True)` must refuse to build."""

    def __reduce__(self):  # what an attack would do: run code when unpickled
        return (print, ("code ran from a data file",))


class Ordered(collections.OrderedDict):
    """A dict subclass: also refused by weights_only."""


class Plain:
    """An ordinary custom class."""


@pytest.fixture(params=["reduce", "subclass", "plain"])
def pickled(request):
    """(make, name): make(d) is the documented dict `d` with a pickled object that weights_only refuses;
    name is its class."""
    if request.param == "reduce":
        return (lambda d: {**d, "extra": Unsafe()}), "print"
    if request.param == "subclass":
        return (lambda d: Ordered(d)), "Ordered"
    return (lambda d: {**d, "extra": Plain()}), "Plain"


@pytest.fixture
def stored(request):
    """stored(trace) -> the trace as the registry stores and loads it back (the card must survive JSON)."""
    from datasets_registry import registry

    def roundtrip(trace):
        name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:60]
        entry = registry.add(trace, name)
        back = registry.load(entry.ref)
        assert (back.counts == trace.counts).all() and (back.steps == trace.steps).all()
        assert back.card.notes == trace.card.notes and back.card.extra == trace.card.extra
        assert back.card.static == trace.card.static and back.card.source == trace.card.source
        return back

    return roundtrip


@pytest.fixture
def refuses():
    """refuses(path, fmt, *words, **options): the import fails with a TraceError naming `path` and `words`."""

    def check(path, fmt, *words, source=None, **options):
        with pytest.raises(TraceError) as info:
            import_path(path, fmt, **options)
        err = info.value
        assert err.source == str(source or path), f"error names {err.source!r}, expected {source or path}"
        for w in words:
            assert w in err.problem, f"{w!r} not in {err.problem!r}"
        return err

    return check
