import numpy as np
import pytest

from bench.task import Task, rolling_origins


def test_origins_follow_iterations_not_records():
    steps = np.arange(501) * 10 + 1  # every 10th iteration, 1..5001
    o = rolling_origins(steps, Task("x", horizons=(1000, 2000), stride=100, min_history=100))
    # first origin at iteration 101 (record 10); last at or before 5001 - H
    assert steps[o[1000].records[0]] == 101 and steps[o[1000].records[-1]] == 4001
    assert steps[o[2000].records[-1]] == 3001
    assert (np.diff(steps[o[1000].records]) == 100).all()
    assert set(o[1000].lengths) == {100} and set(o[2000].lengths) == {200}
    # every target window lies inside the trace and starts at the origin
    for H, org in o.items():
        assert (org.records + org.lengths <= len(steps)).all()


def test_spaced_steps_give_variable_record_counts():
    steps = np.array([0, 1, 2, 3, 10, 11, 12, 20, 21, 22, 23, 24, 25, 30, 31, 40])
    o = rolling_origins(steps, Task("x", horizons=(10,), stride=10, min_history=10))
    assert steps[o[10].records].tolist() == [10, 20, 30]
    assert o[10].lengths.tolist() == [3, 6, 2]


@pytest.mark.parametrize("kw", [dict(horizons=()), dict(stride=0), dict(refit="sometimes"), dict(min_history=0)])
def test_bad_tasks_are_refused(kw):
    with pytest.raises(ValueError):
        Task("x", **kw)


def test_fingerprint_changes_with_what_changes_the_targets():
    t = Task("x")
    fp = t.fingerprint("sha256:a")
    assert Task("y").fingerprint("sha256:a") == fp  # the dataset is identified by its content
    assert t.fingerprint("sha256:b") != fp
    assert Task("x", stride=50).fingerprint("sha256:a") != fp
    assert Task("x", horizons=(2000, 1000)).fingerprint("sha256:a") == fp


def test_refit_policies():
    assert [Task("x", refit="every:3").refit_due(i) for i in range(7)] == [True, False, False, True, False, False, True]
    assert [Task("x", refit="once").refit_due(i) for i in range(3)] == [True, False, False]
