"""LSTM: valid distributions, deterministic with a seed, trains on the training traces, logs."""

import subprocess
import sys

import numpy as np
import pytest

from bench.evaluate import check_forecast, evaluate
from bench.task import Task
from datasets_registry.trace import Card, Trace
from models import ParamError, predictor_class
from models.lstm import LSTMPredictor

SMALL = dict(
    window=200,
    bins=8,
    hidden=8,
    embed=2,
    epochs=2,
    sample_stride=8,
    batch_size=32,
    horizon=600,
    chunks=2,
    val_fraction=0.0,
)  # no held-out origins: every training changes the weights


@pytest.fixture(scope="module")
def halves(smartmoe):
    """Two independent-ish stretches of the real SmartMoE-AE trace, 3 layers x 32 experts:
    records 0..199 for training and 250..449 (renumbered from step 1) under test."""
    c, s = smartmoe.counts[:, :3], smartmoe.steps
    train = Trace.from_arrays(c[:200], s[:200], card=Card(id="train-half"))
    test = Trace.from_arrays(c[250:450], s[250:450] - s[250] + 1, card=Card(id="test-half"))
    return train, test


TASK = Task(dataset="x", horizons=(300, 600), stride=400, min_history=600)


def run(pred, test, training=()):
    ev = evaluate(test, pred, TASK, training)
    assert not ev.failures, ev.failures
    return ev.frame().sort_values(["horizon", "origin", "layer"])["error_rate"].to_numpy()


def test_registry_maps_lstm_and_torch_is_not_imported_with_the_module():
    assert predictor_class("lstm") is LSTMPredictor
    code = "import sys, models.lstm; sys.exit('torch' in sys.modules or 'pytorch_lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_forecasts_are_distributions_over_the_horizon(halves):
    train, test = halves
    pred = LSTMPredictor(**SMALL)
    pred.start(3, 32, [train])
    pred.observe(test.counts[:80], test.steps[:80])
    out = pred.predict(60)  # 600 iterations: chunk 0 for records 0..29, chunk 1 after
    check_forecast(out, 60, 3, 32)
    assert np.array_equal(out[0], out[29]) and not np.array_equal(out[29], out[30])


def test_deterministic_with_a_seed(halves):
    train, test = halves
    a = run(LSTMPredictor(**SMALL, seed=7), test, [train])
    b = run(LSTMPredictor(**SMALL, seed=7), test, [train])
    c = run(LSTMPredictor(**SMALL, seed=8), test, [train])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_training_traces_are_used_and_refit_does_not_retrain(halves):
    train, test = halves
    pred = LSTMPredictor(**SMALL)
    pred.start(3, 32, [train])
    assert pred.trainings == 1 and len(pred.curves["lstm/train_loss"]) == SMALL["epochs"]
    untrained = LSTMPredictor(**SMALL)
    untrained.start(3, 32)
    for p in (pred, untrained):
        p.observe(test.counts[:80], test.steps[:80])
        p.refit()
    assert pred.trainings == 1 and untrained.trainings == 1  # the untrained one learnt from history
    assert not np.allclose(pred.predict(5), untrained.predict(5))
    with pytest.raises(ParamError, match="layers, experts"):
        LSTMPredictor(**SMALL).start(2, 32, [train])


def test_retraining_after_forecasts_runs_in_training_mode(halves):
    """`predict` puts the module in eval mode; a later training must switch it back (cuDNN's LSTM
    refuses to backpropagate in eval mode, so on a GPU every retraining would fail)."""
    _, test = halves
    pred = LSTMPredictor(**{**SMALL, "min_train_records": 40, "retrain_every": 1})
    pred.start(3, 32)
    pred.observe(test.counts[:40], test.steps[:40])
    pred.refit()
    pred.predict(10)
    modes = []
    pred.module.lstm.register_forward_hook(lambda m, i, o: modes.append(m.training))
    pred.observe(test.counts[40:80], test.steps[40:80])
    pred.refit()
    assert pred.trainings == 2 and True in modes


def test_history_training_follows_its_schedule(halves):
    _, test = halves
    pred = LSTMPredictor(**{**SMALL, "min_train_records": 60, "retrain_every": 2})
    pred.start(3, 32)
    trained_at = []
    for n in (20, 40, 60, 80, 100, 120):
        pred.observe(test.counts[n - 20 : n], test.steps[n - 20 : n])
        pred.refit()
        trained_at.append(pred.trainings)
    assert trained_at == [0, 0, 1, 1, 2, 2]  # first at 60 records, then every 2nd refit


def test_checkpoint_and_curves_for_mlflow(halves, tmp_path):
    train, test = halves
    pred = LSTMPredictor(**{**SMALL, "val_fraction": 0.2})
    scores = run(pred, test, [train])
    extras = pred.mlflow_extras(tmp_path)
    assert extras["metrics"]["lstm.trainings"] == 1
    assert len(extras["curves"]["lstm/train_loss"]) == SMALL["epochs"] == len(extras["curves"]["lstm/val_loss"])
    import torch

    ckpt = torch.load(
        tmp_path / "lstm.ckpt", weights_only=True
    )  # tensors and plain values only: loads without executing code
    assert (ckpt["layers"], ckpt["experts"]) == (3, 32) and str(tmp_path / "lstm.ckpt") in extras["artifacts"]
    # the checkpoint restores the trained model: the same scores on the trace under test, no training
    restored = LSTMPredictor.from_checkpoint(tmp_path / "lstm.ckpt")
    np.testing.assert_allclose(run(restored, test), scores, rtol=0, atol=1e-6)
    assert restored.trainings == 0
    with pytest.raises(ParamError, match="layers, experts"):
        LSTMPredictor.from_checkpoint(tmp_path / "lstm.ckpt").start(2, 32)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ParamError, match="bad.ckpt: not an lstm checkpoint"):
        LSTMPredictor.from_checkpoint(tmp_path / "bad.ckpt")


def test_best_epoch_is_kept_and_an_overfitting_training_changes_nothing(halves):
    train, test = halves
    pred = LSTMPredictor(**{**SMALL, "val_fraction": 0.3, "epochs": 3, "lr": 0.5})  # a step size that can only hurt
    pred.start(3, 32, [train])
    val = pred.curves["lstm/val_loss"]
    assert len(val) == 3 and pred.best_val <= min(val)


def test_asking_for_a_gpu_without_one_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ParamError, match="device=gpu, but torch .* sees no CUDA GPU"):
        LSTMPredictor(**SMALL, device="gpu").start(3, 32)  # before any training, with or without training traces


def test_bench_run_lstm_logs_checkpoint_and_curves_to_mlflow(bench_run):
    """`python -m bench run --model lstm` end to end on the built-in tiny tracer trace, trained on its own history."""
    params = [
        "--param",
        "epochs=2",
        "--param",
        "hidden=8",
        "--param",
        "retrain_every=100",
        "--param",
        "min_train_records=1000",
    ]
    result, run, artifacts, client = bench_run(
        "--model", "lstm", "--dataset", "tiny-cpu-s1", "--horizon", "1000", "--stride", "1500", *params
    )
    assert result["failures"] == 0 and result["horizons"]["1000"]["n_origins"] == 3
    m = run.data.metrics
    assert m["lstm.trainings"] == 1  # at the first origin with 1,000 records of history, then not again
    assert "lstm.ckpt" in artifacts
    curve = client.get_metric_history(run.info.run_id, "lstm/train_loss")
    assert sorted(x.step for x in curve) == [0, 1]  # one point per epoch
    assert m["h1000/error_rate/all"] == pytest.approx(result["horizons"]["1000"]["error_rate"]["all"])


def test_residual_quantiles_recover_a_known_spread():
    """Errors drawn as binomial_scale(phat) x N(0, 1): their standardised quantiles are the normal's."""
    from statistics import NormalDist

    from models.base import QUANTILE_LEVELS
    from models.lstm import binomial_scale, residual_quantiles

    rng = np.random.default_rng(0)
    N, C, K, E = 40, 2, 50, 16
    pred = rng.dirichlet(np.full(E, 5.0), size=(N, C))
    truth = pred[:, :, None, :] + binomial_scale(pred, E)[:, :, None, :] * rng.standard_normal((N, C, K, E))
    truth[:, 1] += 100.0  # records past `valid` (all of chunk 1 here) must not count
    z = residual_quantiles(pred, truth, np.full(N, K), np.zeros(N, dtype=int), 1)
    np.testing.assert_allclose(z[0, 0], [NormalDist().inv_cdf(q) for q in QUANTILE_LEVELS], atol=0.05)
    np.testing.assert_array_equal(z[0, 1], z[0, 0])  # a chunk no sample reaches: the nearest earlier chunk's


def test_quantiles_from_held_out_origins_cover_and_survive_the_checkpoint(halves, tmp_path):
    from bench.evaluate import check_quantiles

    train, test = halves
    pred = LSTMPredictor(**{**SMALL, "val_fraction": 0.2})
    assert pred.probabilistic
    ev = evaluate(test, pred, TASK, [train])
    frame = ev.frame()
    assert not ev.failures and frame["coverage_90"].mean() > 0.85  # 0.93 measured
    q = check_quantiles(pred.predict_quantiles(60), 60, 3, 32)
    phat = pred.predict(60)
    assert (q[..., 0] <= phat + 1e-12).all() and (q[..., -1] >= phat - 1e-12).all()
    pred.mlflow_extras(tmp_path)
    restored = LSTMPredictor.from_checkpoint(tmp_path / "lstm.ckpt")  # the held-out quantiles are in it
    restored.start(3, 32)
    seen = len(pred.history)
    restored.observe(test.counts[:seen].copy(), test.steps[:seen].copy())
    np.testing.assert_allclose(restored.predict_quantiles(60), q, atol=1e-6)
