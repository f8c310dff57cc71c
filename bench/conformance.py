"""The conformance suite behind ``python -m bench check-predictor SPEC``.

It runs a predictor through the real harness (:func:`bench.evaluate.evaluate`) on a small real
slice (the first 150 records and 4 layers of the built-in default trace, gpt3-125m-16e-top2-s1, or
of the dataset asked for; a SYNTHETIC labelled trace where neither can be loaded) and checks, in order:

1. **load**: the spec resolves to a Predictor subclass;
2. **interface**: ``name``, ``defaults``, ``search_space`` (every entry a parameter, well formed,
   constructible at its bounds/choices), ``refit_policies``, ``predict`` implemented;
3. **construct**: the class accepts its defaults and the given parameters;
4. **forecasts**: at every origin the forecast has shape ``[H, L, E]``, is finite, non-negative
   and each row sums to 1, and nothing raises (the first traceback of each failing method is
   shown);
5. **determinism**: a second, fresh instance on the same data forecasts the same (within 1e-9), compared
   on the valid forecasts only (finite: a NaN forecast already fails 4); skipped, saying why, when there
   is none;
6. **no look-ahead**: for several origins ``o``, the run is repeated on a copy of the trace whose
   records at and after ``o`` are replaced by a scrambled future (time and experts reversed);
   every forecast made at an origin ``<= o`` must be unchanged. A predictor whose forecast
   depends on data it could not have had (by walking the interpreter's stack to the harness,
   finding the trace through the garbage collector, ...) fails here. While the predictor runs,
   the data home and dataset sources point to an empty folder, so reading the dataset from the
   registry fails too. Skipped, saying why, when determinism failed (a forecast that changes anyway
   shows nothing) or there is no valid forecast;
7. **speed** (information only): seconds per origin inside the predictor, and a projection to
   the default task on the whole trace.

:func:`check_predictor` returns a :class:`Report`; it is ``ok`` when no check failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable
from unittest import mock

import numpy as np

from models.base import record_spacing

from .evaluate import ForecastError
from .task import Task, rolling_origins

TOL = 1e-9
SPACE_KINDS = ("int", "float", "log", "cat")


@dataclass
class Check:
    name: str
    status: str  # pass | fail | info | skip
    detail: str = ""


@dataclass
class Report:
    spec: str
    data: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def add(self, name: str, status: str, detail: str = "") -> bool:
        self.checks.append(Check(name, status, detail))
        return status != "fail"

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "data": self.data, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def text(self) -> str:
        lines = [f"check-predictor {self.spec}", f"data: {self.data}" if self.data else ""]
        for c in self.checks:
            first, *rest = (c.detail or "").splitlines() or [""]
            lines.append(f"{c.status.upper():5} {c.name}: {first}")
            lines += [f"      {r}" for r in rest]
        failed = [c.name for c in self.checks if c.status == "fail"]
        lines.append(f"FAILED: {', '.join(failed)}" if failed else "all checks passed")
        return "\n".join(line for line in lines if line)


class Recorder:
    """Wraps a predictor instance's methods: keeps each forecast (by origin), the time spent
    inside the predictor, and the first traceback of every method that raised."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.forecasts: dict[int, np.ndarray | None] = {}
        self.errors: dict[str, str] = {}
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        for name in ("fit", "update", "refit", "predict"):
            setattr(predictor, name, self._wrap(name, getattr(predictor, name)))

    def _wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            self._depth += 1
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            except ForecastError:  # the harness refused the forecast (in a worker): the failure says why, no traceback
                raise
            except Exception:
                self.errors.setdefault(name, traceback.format_exc(limit=-4))
                raise
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - t0
            if name == "predict":
                self.calls += 1
                try:
                    self.forecasts[len(self.predictor.history)] = np.array(out, dtype=np.float64)
                except (TypeError, ValueError):
                    self.forecasts[len(self.predictor.history)] = None
            return out

        return wrapped


@contextlib.contextmanager
def sealed_registry():
    """Point the data home and every dataset source at an empty folder for the duration."""
    with tempfile.TemporaryDirectory(prefix="moe-sealed-") as empty, mock.patch.dict(os.environ):  # restored on exit
        for k in [k for k in os.environ if k.startswith("MOE_LOAD_BENCH_SOURCE")]:
            del os.environ[k]
        os.environ["MOE_LOAD_BENCH_HOME"] = empty
        yield


def close(predictor) -> None:
    """Stop a predictor's worker process, if it runs in one (:mod:`bench.isolation`)."""
    if callable(getattr(predictor, "close", None)):
        predictor.close()


def space_problems(make: Callable[..., Any], meta, params: dict[str, Any]) -> list[str]:
    """What is wrong with `meta.search_space` (empty when nothing); `make(**params)` builds an instance."""
    out = []
    space = getattr(meta, "search_space", {})
    if not isinstance(space, dict):
        return [f"search_space must be a dict, got {type(space).__name__}"]
    for key, spec in space.items():
        if key not in meta.defaults:
            out.append(f"search_space[{key!r}]: not a parameter (defaults has {sorted(meta.defaults)})")
            continue
        if not isinstance(spec, tuple) or not spec or spec[0] not in SPACE_KINDS:
            out.append(f"search_space[{key!r}] = {spec!r}: expected (int|float|log, low, high) or ('cat', [choices])")
            continue
        if spec[0] == "cat":
            if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
                out.append(f"search_space[{key!r}] = {spec!r}: expected ('cat', [choices])")
                continue
            values = list(spec[1])
        else:
            if (
                len(spec) != 3
                or not all(isinstance(x, (int, float)) for x in spec[1:])
                or not spec[1] < spec[2]
                or (spec[0] == "log" and spec[1] <= 0)
            ):
                out.append(
                    f"search_space[{key!r}] = {spec!r}: expected ({spec[0]!r}, low, high) with low < "
                    f"high{' and low > 0' if spec[0] == 'log' else ''}"
                )
                continue
            values = list(spec[1:])
        for v in values:
            try:
                close(make(**{**params, key: v}))
            except Exception as exc:
                out.append(f"search_space[{key!r}]: {key}={v!r} is rejected: {type(exc).__name__}: {exc}")
    return out


def interface_problems(cls) -> list[str]:
    """What is wrong with a class's (or an isolated predictor's) declared interface."""
    from models.base import Predictor

    out = []
    if not isinstance(cls.name, str) or not cls.name:
        out.append("`name` must be a non-empty string")
    if not isinstance(cls.defaults, dict) or not all(isinstance(k, str) for k in cls.defaults):
        out.append("`defaults` must be a dict of parameter name -> default")
    else:
        try:
            json.dumps(cls.defaults)
        except (TypeError, ValueError) as exc:
            out.append(f"`defaults` must be JSON values (numbers, strings, booleans, None): {exc}")
    bad = set(cls.refit_policies) - {"every", "every:K", "once"}
    if bad:
        out.append(f"`refit_policies` has unknown entries {sorted(bad)}")
    if not isinstance(cls.version, int):
        out.append("`version` must be an int")
    if isinstance(cls, type) and cls.predict is Predictor.predict:
        out.append("`predict(records)` is not implemented")
    return out


def _data(dataset, records: int, layers: int):
    """(slice under test, training slice, full trace or None, description); `dataset`: an id, a Trace or None."""
    from datasets_registry import registry
    from datasets_registry.registry import DEFAULT_DATASET
    from datasets_registry.synthetic import switching_trace
    from datasets_registry.trace import Trace

    from .slices import sub_trace

    full = dataset if isinstance(dataset, Trace) else None
    try:
        full = full or registry.load(dataset or DEFAULT_DATASET)
    except Exception:
        if dataset:
            raise
    if full is None or full.records < records + 1:
        synth = switching_trace(
            records=2 * records, layers=layers, experts=16, switch=records // 2, step_every=10, seed=7
        )
        test, train = sub_trace(synth, 0, records, tag="head"), sub_trace(synth, records, tag="tail")
        return (
            test,
            train,
            None,
            f"{synth.id} (SYNTHETIC, {DEFAULT_DATASET} not available): first {records} records, {synth.layers} layers",
        )
    test = sub_trace(full, 0, records, layers, tag=f"head{records}")
    rest = full.records - records
    train = sub_trace(full, records, min(full.records, 2 * records), layers, tag="train") if rest >= 20 else test
    return (
        test,
        train,
        full,
        f"{full.id}: first {records} records (steps {full.steps[0]}..{full.steps[records - 1]}), first {test.layers} "
        f"of {full.layers} layers",
    )


def conformance_task(trace) -> Task:
    """Origins every 20 records after 20 records of history; horizons of 20 and 50 records."""
    d = max(1, int(record_spacing(trace.steps)))
    return Task(trace.id, horizons=(20 * d, 50 * d), stride=20 * d, min_history=20 * d)


def _run(make, params, trace, task, training):
    """(recorder, evaluation or None, exception from start or None)."""
    from .evaluate import evaluate

    pred = make(**params)
    rec = Recorder(pred)
    with sealed_registry():
        try:
            ev = evaluate(trace, pred, task, training)
        except Exception as exc:
            rec.errors.setdefault("start", traceback.format_exc(limit=-4))
            return rec, None, exc
        finally:
            close(pred)
    return rec, ev, None


def _scramble(trace, origin: int, stop: int):
    """The trace up to `stop`, with records from `origin` on replaced by a scrambled future."""
    from .slices import sub_trace

    counts = np.array(trace.counts[:stop])
    counts[origin:] = trace.counts[origin:stop][::-1, :, ::-1]
    return sub_trace(trace, 0, stop, counts=counts, tag=f"scrambled-from-{origin}")


def valid(x: np.ndarray | None) -> bool:
    """Whether a recorded forecast can be compared: a non-empty array of finite numbers (a NaN is not equal to
    itself, so comparing one would report a difference that is not there)."""
    return x is not None and x.size > 0 and bool(np.isfinite(x).all())


def _diff(a: dict, b: dict, upto: int | None = None) -> tuple[tuple[int, float | None] | None, int]:
    """(the first origin (<= upto) where the forecasts differ and by how much, None if none do; the number of
    origins compared). Only valid forecasts are compared; one valid where the other is not is a difference
    of None."""
    compared = 0
    for o in sorted(set(a) & set(b)):
        if upto is not None and o > upto:
            break
        x, y = a[o], b[o]
        if valid(x) != valid(y):
            return (o, None), compared + 1
        if not valid(x):
            continue
        compared += 1
        if x.shape != y.shape:
            return (o, float("inf")), compared
        d = float(np.max(np.abs(x - y)))
        if not d <= TOL:
            return (o, d), compared
    return None, compared


def _by(d: float | None) -> str:
    return "one forecast valid, the other not" if d is None else f"max |diff| {d:.3g}"


def _failure_detail(ev, rec: Recorder) -> str:
    kinds: dict[str, list] = {}
    for f in ev.failures:
        kinds.setdefault(f["error"], []).append(f["origin_step"])
    lines = [
        f"{len({f['origin'] for f in ev.failures})} of "
        f"{len({f['origin'] for f in ev.failures} | {r['origin'] for r in ev.rows})} origins failed"
    ]
    for err, steps in kinds.items():
        lines.append(f"{err}  (origin steps {sorted(set(steps))[:5]}{' ...' if len(set(steps)) > 5 else ''})")
    for method, tb in rec.errors.items():
        lines.append(f"first exception in {method}():")
        lines += ["  " + line for line in tb.rstrip().splitlines()]
    return "\n".join(lines)


def _subject(spec: str, limits) -> tuple[Callable[..., Any], Any, str]:
    """(make(**params) -> predictor, its declared interface, where it comes from) for `spec`.

    Code that is not part of this package is loaded and run only in a sandboxed worker, as `bench
    run` runs it (:mod:`bench.isolation`); its interface is what the worker reports.
    """
    from models import predictor_class
    from models.registry import THIRD_PARTY, check_name, spec_kind

    if spec_kind(spec) in THIRD_PARTY:
        from .isolation import IsolatedPredictor, Limits

        def make(**params):
            return IsolatedPredictor(spec, params, limits=limits or Limits())

        probe = make()
        close(probe)
        check_name(probe.name, spec)
        meta = probe.metadata
        return make, probe, f"{meta['module_file']}:{meta['class_name']}, in a sandboxed worker ({probe.isolation})"
    cls = predictor_class(spec)
    return cls, cls, f"{cls.__module__}.{cls.__qualname__}"


def check_predictor(
    spec: str, params: dict[str, Any] | None = None, dataset=None, records: int = 150, layers: int = 4, limits=None
) -> Report:
    """Run the conformance suite on the predictor `spec` names (see the module docstring).

    `dataset`: a dataset id or a Trace to slice; by default the built-in default trace, else a
    SYNTHETIC one. `limits`: the worker's time limits for a predictor that is not built in.
    """
    params = dict(params or {})
    report = Report(spec)
    try:
        make, meta, where = _subject(spec, limits)
    except (ValueError, LookupError) as exc:  # a bad spec or file: its message names it (file:line: error)
        report.add("load", "fail", str(exc.args[0]) if exc.args else type(exc).__name__)
        return report
    except Exception as exc:
        report.add("load", "fail", f"{type(exc).__name__}: {exc}")
        return report
    report.add("load", "pass", f"{where}, name {meta.name!r}")

    problems = interface_problems(meta)
    try:
        constructed = make(**params)
        close(constructed)
    except Exception as exc:
        report.add("interface", "fail" if problems else "pass", "\n".join(problems))
        report.add("construct", "fail", f"{meta.name}(**{params}) raised {type(exc).__name__}: {exc}")
        return report
    problems += space_problems(make, meta, params)
    report.add(
        "interface",
        "fail" if problems else "pass",
        "\n".join(problems)
        or f"parameters {sorted(meta.defaults)}; search space {sorted(meta.search_space) or 'none'}",
    )
    report.add("construct", "pass", json.dumps(constructed.params, default=str))

    trace, train, full, report.data = _data(dataset, records, layers)
    task = conformance_task(trace)
    training = [train] if meta.needs_training else []
    origins = sorted({int(r) for o in rolling_origins(trace.steps, task).values() for r in o.records})

    first, ev, exc = _run(make, params, trace, task, training)
    if ev is None:
        report.add(
            "forecasts",
            "fail",
            f"the harness could not start it: {type(exc).__name__}: {exc}\n" + first.errors.get("start", ""),
        )
        return report
    L, E = trace.layers, trace.experts
    if ev.failures:
        report.add("forecasts", "fail", _failure_detail(ev, first))
    else:
        report.add(
            "forecasts",
            "pass",
            f"{len(origins)} origins, horizons {list(task.horizons)} iterations: "
            f"every forecast [H, {L}, {E}], finite, >= 0, rows sum to 1",
        )
    invalid = sum(not valid(v) for v in first.forecasts.values())
    if not any(valid(v) for v in first.forecasts.values()):
        why = ("no valid forecast to compare: every forecast failed the forecasts check" if first.forecasts
               else "no forecast to compare: no call of predict gave one (see forecasts)")
        report.add("determinism", "skip", why)
        report.add("no look-ahead", "skip", why)
    else:
        second, _, _ = _run(make, params, trace, task, training)
        d, compared = _diff(first.forecasts, second.forecasts)
        deterministic = d is None
        step = lambda o: int(trace.steps[o]) if o < trace.records else o  # noqa: E731
        left_out = f"; {invalid} invalid forecast(s) (see forecasts) left out" if invalid else ""
        report.add(
            "determinism",
            "pass" if deterministic else "fail",
            f"a fresh instance forecasts the same on the same data ({compared} origins compared{left_out})"
            if deterministic
            else f"two fresh instances on the same data differ at origin step {step(d[0])} ({_by(d[1])}); "
            "seed every source of randomness (e.g. a random_state parameter)",
        )
        if not deterministic:
            report.add("no look-ahead", "skip", "two fresh instances already differ on the same data (determinism), "
                       "so a forecast that changes when the future is scrambled would not show look-ahead")
        else:
            max_h = max(int(n) for o in rolling_origins(trace.steps, task).values() for n in o.lengths)
            picks = sorted({origins[0], origins[len(origins) // 2], origins[-1]})
            leaks = []
            for o in picks:
                stop = min(trace.records, o + max_h + 1)
                rec, _, _ = _run(make, params, _scramble(trace, o, stop), task, training)
                d, _ = _diff(first.forecasts, rec.forecasts, upto=o)
                if d is not None:
                    leaks.append(
                        f"with the records from step {trace.steps[o]} on scrambled, the forecast at origin step "
                        f"{step(d[0])} changed ({_by(d[1])}): it used data at or after its origin"
                    )
            report.add(
                "no look-ahead",
                "fail" if leaks else "pass",
                "\n".join(leaks)
                or f"forecasts at origins <= o unchanged when the records from o on are scrambled (o at steps "
                   f"{[int(trace.steps[o]) for o in picks]}{left_out.replace(';', ',')})",
            )
    per_origin = first.seconds / max(1, first.calls)
    detail = f"{per_origin:.3g} s per origin inside the predictor ({first.calls} forecasts, {first.seconds:.2f} s)"
    if full is not None:
        n_full = len({int(r) for o in rolling_origins(full.steps, Task(full.id)).values() for r in o.records})
        detail += (
            f"; default task on {full.id} ({n_full} origins, {full.layers} layers): "
            f"~{per_origin * n_full * full.layers / L:.3g} s if its cost grows with layers"
        )
    report.add("speed", "info", detail)
    return report
