"""Suites: named, versioned sets of tasks that submissions are run on (as fev's and GIFT-Eval's benchmarks).

A suite task is a dataset pinned by id, version and content fingerprint, with the task settings
(:class:`bench.task.Task`) it is evaluated under. A suite never changes once published: other
datasets or settings make a new version (or a new name), so two submissions to ``moe-load-v1``
are always scored on the same data. :func:`check` says where the local data differs from a suite.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from .task import Task


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: a dataset version, its content fingerprint, and the task's settings."""

    dataset: str  # dataset id
    version: int
    fingerprint: str  # the dataset's content fingerprint (its card's), "sha256:..."
    task: Task = None  # type: ignore[assignment]  # default: Task's defaults on this dataset

    def __post_init__(self):
        object.__setattr__(self, "task", replace(self.task or Task(dataset=self.ref), dataset=self.ref, train=()))

    @property
    def ref(self) -> str:
        """``id@version``: what the registry and ``bench run --dataset`` take."""
        return f"{self.dataset}@{self.version}"

    def settings(self) -> dict[str, Any]:
        """The task's settings, without the dataset and training traces (what a run on it must match)."""
        return {k: v for k, v in self.task.to_dict().items() if k not in ("dataset", "train")}

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.version, "fingerprint": self.fingerprint,
                "task": self.settings()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SuiteTask":
        """The inverse of :meth:`to_dict`; ValueError (or KeyError, TypeError) on a malformed entry."""
        dataset, version, fp = d["dataset"], d["version"], d["fingerprint"]
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"a task's dataset must be a dataset id, got {dataset!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"dataset {dataset}: version must be a positive integer, got {version!r}")
        if not isinstance(fp, str) or not fp.startswith("sha256:"):
            raise ValueError(f"dataset {dataset}: fingerprint must be 'sha256:...', got {fp!r}")
        settings = d.get("task", {})
        if not isinstance(settings, Mapping):
            raise ValueError(f"dataset {dataset}: task settings must be an object")
        return cls(dataset, version, fp, Task.from_dict({**settings, "dataset": f"{dataset}@{version}"}))


@dataclass(frozen=True)
class Suite:
    """A named, versioned set of tasks."""

    name: str
    version: int
    tasks: tuple[SuiteTask, ...]
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"suite {self.name}: a dataset appears in more than one task")

    @property
    def datasets(self) -> tuple[str, ...]:
        """The dataset ids of the tasks, in order."""
        return tuple(t.dataset for t in self.tasks)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def task(self, dataset: str) -> SuiteTask:
        """The suite's task on a dataset id."""
        for t in self.tasks:
            if t.dataset == dataset:
                return t
        raise LookupError(f"suite {self.name} has no task on {dataset!r}; its datasets: {', '.join(self.datasets)}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Suite":
        """The inverse of :meth:`to_dict`; ValueError (or KeyError, TypeError) on a malformed suite."""
        name, version, tasks = d["name"], d["version"], d["tasks"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"a suite's name must be a non-empty string, got {name!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"suite {name}: version must be a positive integer, got {version!r}")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, Mapping) for t in tasks):
            raise ValueError(f"suite {name}: tasks must be a non-empty list of objects")
        return cls(name, version, tuple(SuiteTask.from_dict(t) for t in tasks), str(d.get("description") or ""))


#: The built-in traces and the public SmartMoE-AE trace under the default task (horizons of 1,000 and
#: 2,000 iterations, an origin every 100 iterations after 100 of history, refit at every origin).
MOE_LOAD_V1 = Suite(
    name="moe-load-v1",
    version=1,
    description="the 7 built-in traces and the public smartmoe-ae, default task",
    tasks=tuple(
        SuiteTask(dataset, 1, fingerprint)
        for dataset, fingerprint in (
            ("gpt3-125m-16e-noaux-s1", "sha256:d0f8fa61102f889b2b83d47f8750fe7d546e7a26a807d91c117f5f7e8995b190"),
            ("gpt3-125m-16e-switch-s1", "sha256:fd90fc31f80e34ff48ce0ac315ba093959f14395ac779f79a5953a820dcd50e0"),
            ("gpt3-125m-16e-top2-s1", "sha256:3c861703c321bbc5db3b725716a51a6fab5ac1b8ea8690b3d6f9cb5afb3674da"),
            ("gpt3-125m-16e-top2-s2", "sha256:466cedee5e07eb82cfadbb14fd4aab9faed1b746a7e293cab7b653dfa8547184"),
            ("gpt3-350m-128e-top2-s1", "sha256:638d44d489dc717c5b9cc65ad835c8e9452d763b1018e5529fa885b45fac999f"),
            ("gpt3-350m-128e-top2-s2", "sha256:6c70c94853ddc721f74662c2f7536da1ac619a4e1c19ac966dc7dbb3877917cc"),
            ("tiny-cpu-s1", "sha256:725625926e36ff77bb57d6458525ba1b672f5890e2c532f297d386fa85f07df7"),
            ("smartmoe-ae", "sha256:ba8d14def116a730b7666beda4b353291eb46b481d1229bb31a6d75a51a8dfa8"),
        )
    ),
)

#: moe-load-v1 and the probe traces of the tracer's v2 runs: the load of 262,144 held-out tokens every 100 iterations,
#: the large-batch regime where per-step noise no longer hides the load signal (docs/tracer.md: a noise floor 6-8
#: times lower, about half of sw_avg's error closable), so that forecasters can be told apart per step.
MOE_LOAD_V2 = Suite(
    name="moe-load-v2",
    version=1,
    description="moe-load-v1 and the 10 large-batch probe traces of the tracer's v2 runs, default task",
    tasks=MOE_LOAD_V1.tasks + tuple(
        SuiteTask(dataset, 1, fingerprint)
        for dataset, fingerprint in (
            ("gpt3-125m-128e-top2-s1-probe", "sha256:50fdc19a8bb08cd218a6d7753d311d3a82bd5097e2852a6d5c98bebf1781d4cc"),
            ("gpt3-125m-128e-top2-s2-probe", "sha256:948f7538c326c4f54f4430f5db0db4db13f1a9c0eceb2690da5ec0fd3423a49d"),
            ("gpt3-125m-128e-top2-s3-probe", "sha256:aac7bf148d2bcea13665f7734520f50740591157cb52ab28881995e2627ec165"),
            ("gpt3-125m-16e-top2-auxfree-s1-probe",
             "sha256:b22e4d3cbbc8eb15915e8f4e3fb60f5076b0408f6964b52c32f53b6922b8dadd"),
            ("gpt3-125m-16e-top2-s3-probe", "sha256:edace8fcf9e21aa781984371e33f7c0c73a6807d8e979433497118d540b63d9b"),
            ("gpt3-125m-16e-top2-s4-probe", "sha256:bf2588ece4dd111f39e6016bc59d225d74176b39eed4fd91cced2a660744ce26"),
            ("gpt3-125m-16e-top2-s5-probe", "sha256:f13f164accd981489631cd0da022d2c8a736e800df36961cf8020cf401b444c4"),
            ("gpt3-125m-16e-top2-shift-s1-probe",
             "sha256:8ee98c55d78c1bfa9619485fde01d1ac3be59a52bfcdfe3ec9f59d21c6058623"),
            ("gpt3-125m-64e-ds6-auxfree-s1-probe",
             "sha256:39af113e28c0770a3b3633b55f1fe0dbd354874698e67a954db80d187a5ae303"),
            ("gpt3-125m-64e-ds6-s1-probe", "sha256:d2ae628de644ed3b26a90c12e599b48430c953ebabf8418bc85c57abf9bd39b8"),
        )
    ),
)

#: The datasets of moe-load-v1 at the serving engines' own re-estimation intervals: SGLang rebalances every 1,000
#: forward passes and vLLM every 3,000 (models/engines.py), so each engine's estimator is scored at the horizon it
#: is used for (moe-load-v1 keeps the seed paper's 1,000 and 2,000).
ENGINE_HORIZONS_V1 = Suite(
    name="engine-horizons",
    version=1,
    description="the datasets of moe-load-v1 at the engines' rebalance intervals: horizons 1,000 and 3,000",
    tasks=tuple(replace(t, task=Task(dataset=t.ref, horizons=(1000, 3000))) for t in MOE_LOAD_V1.tasks),
)

#: Every declared suite by name.
SUITES: dict[str, Suite] = {s.name: s for s in (MOE_LOAD_V1, MOE_LOAD_V2, ENGINE_HORIZONS_V1)}
DEFAULT_SUITE = MOE_LOAD_V2.name


def get(name: str) -> Suite:
    """A declared suite by name; LookupError naming the declared ones."""
    if name not in SUITES:
        raise LookupError(f"no suite {name!r}; declared: {', '.join(SUITES)}")
    return SUITES[name]


def local_fingerprint(ref: str) -> str:
    """The content fingerprint of the local dataset `ref` (``id@version``), from its card.

    A declared public dataset is built from its local copy on first use. Raises LookupError,
    OSError or ValueError where it is missing or unreadable.
    """
    from datasets_registry import registry, storage

    return storage.read_card(registry.resolve(ref).folder).fingerprint


@dataclass(frozen=True)
class Problem:
    """A suite's dataset that the local data lacks (``missing``) or holds with other content (``fingerprint``)."""

    dataset: str  # id@version
    kind: str  # missing | fingerprint
    message: str  # names the dataset and the suite

    def __str__(self) -> str:
        return self.message


def check(suite: Suite) -> list[Problem]:
    """What differs between the suite and the local data: one problem per dataset missing or changed."""
    problems = []
    for t in suite.tasks:
        try:
            here = local_fingerprint(t.ref)
        except (LookupError, OSError, ValueError) as exc:
            problems.append(Problem(t.ref, "missing", f"dataset {t.ref} of suite {suite.ref}: missing here ({exc})"))
            continue
        if here != t.fingerprint:
            problems.append(Problem(t.ref, "fingerprint", f"dataset {t.ref} of suite {suite.ref}: fingerprint {here} "
                                                          f"here, the suite pins {t.fingerprint}"))
    return problems


__all__ = ["Suite", "SuiteTask", "Problem", "SUITES", "DEFAULT_SUITE", "MOE_LOAD_V1", "MOE_LOAD_V2",
           "ENGINE_HORIZONS_V1", "get", "check", "local_fingerprint"]
