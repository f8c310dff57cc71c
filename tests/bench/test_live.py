"""The forecaster in the loop: the plans a live run makes are those computed offline from its trace."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from bench.live import LivePlanner, offline_plans
from bench.placement import PlacementSpec, place
from datasets_registry import registry


class Recorded(NamedTuple):
    counts: np.ndarray
    steps: np.ndarray


def assert_same_plans(live, offline):
    assert [p.step for p in live] == [p.step for p in offline]
    for a, b in zip(live, offline):
        np.testing.assert_array_equal(a.forecast, b.forecast)
        np.testing.assert_array_equal(a.placement.slots, b.placement.slots)
        assert a.scores == b.scores


@pytest.mark.parametrize("model,params", [("sw_avg", {"window": 200}), ("ema", {}), ("arima", {})])
def test_fed_block_by_block_the_plans_are_the_offline_ones(model, params):
    """Blocks of any size, cut anywhere: each plan at s has seen iterations < s, as a harness origin at s."""
    trace = registry.load("tiny-cpu-s1")
    counts, steps = trace.counts[:1300], trace.steps[:1300]
    planner = LivePlanner(model, "G=4,R=4", every=250, params=params)
    for a, b in zip([0, 1, 7, 250, 251, 600, 999], [1, 7, 250, 251, 600, 999, 1300]):
        planner.feed(counts[a:b], steps[a:b])
    offline = offline_plans(Recorded(counts, steps), model, "G=4,R=4", every=250, params=params)
    assert [p.step for p in planner.plans] == [250, 500, 750, 1000, 1250]
    assert_same_plans(planner.plans, offline)
    for plan in planner.plans[:-1]:  # scored once their horizon happened; the last one's has not
        assert set(plan.scores) == {"error_rate", "window_error", "imbalance", "imbalance_static", "imbalance_oracle"}
    assert not planner.plans[-1].scores
    # a plan is the placement of its forecast's mean, as `bench placement` places a load
    for plan in planner.plans:
        np.testing.assert_array_equal(plan.placement.slots, place(plan.forecast.mean(axis=0), planner.spec).slots)


def test_a_plan_has_seen_only_the_iterations_before_it():
    trace = registry.load("tiny-cpu-s1")
    planner = LivePlanner("last", PlacementSpec(devices=4, replicas=4), every=100)
    planner.feed(trace.counts[:350], trace.steps[:350])
    for plan in planner.plans:
        last = trace.counts[plan.step - 1]
        np.testing.assert_allclose(plan.forecast[0], last / last.sum(axis=1, keepdims=True))
    with pytest.raises(ValueError, match="plan interval"):
        LivePlanner("last", "G=4", every=0)


def test_lightning_callback_on_the_tiny_preset_logs_the_plans_computed_offline(tmp_path):
    """Trains the tiny preset's model with the callback; its plans equal the offline ones from the
    recorded loads, and their scores reach MLflow at the plans' iterations."""
    import mlflow
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import MLFlowLogger

    from bench.lightning import ExpertLoadPlanning
    from datasets_registry.tracer.config import PRESETS
    from datasets_registry.tracer.model import MoEGPT

    torch.manual_seed(0)
    cfg = PRESETS["tiny-cpu"]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = MoEGPT(cfg)

        def training_step(self, batch, batch_idx):
            loss, aux, _, _ = self.model(batch[:, :-1], batch[:, 1:])
            return loss + cfg.aux_loss * aux

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=cfg.lr)

    tokens = torch.randint(0, cfg.vocab, (50 * cfg.batch_size, cfg.seq_len + 1),
                           generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(tokens, batch_size=cfg.batch_size)
    seen = []
    planning = ExpertLoadPlanning(
        routers=lambda m: {f"moe{i}": b.moe for i, b in enumerate(m.model.moe_blocks)},
        num_experts=cfg.n_experts, kind="counts", select=1, model="sw_avg", params={"window": 5},
        spec="G=4,R=4", every=10, flush_every=7, on_plan=seen.append,
    )
    logger = MLFlowLogger(experiment_name="live", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    pl.Trainer(max_steps=50, callbacks=[planning], logger=logger, accelerator="cpu", enable_progress_bar=False,
               enable_checkpointing=False, enable_model_summary=False).fit(Module(), loader)

    recorder = planning.driver.recorder
    counts, steps = recorder.counts(), recorder.steps()
    assert counts.shape == (50, len(cfg.moe_layer_ids), cfg.n_experts) and steps.tolist() == list(range(50))
    # after iteration 49 a live run plans for iteration 50 on: so does the offline planner told the run went on
    assert [p.step for p in seen] == [10, 20, 30, 40, 50] == [p.step for p in planning.plans]
    offline = offline_plans(Recorded(counts, steps), "sw_avg", "G=4,R=4", 10, params={"window": 5}, upto=50)
    assert_same_plans(planning.plans, offline)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(logger.run_id, "live/imbalance")
    assert [m.step for m in history] == [10, 20, 30, 40]
    assert [m.value for m in history] == pytest.approx([p.scores["imbalance"] for p in planning.plans[:4]])
    assert not planning.plans[4].scores  # its horizon has not happened


def test_the_tracer_plans_while_it_trains_as_offline(tmp_path, capsys):
    """`bench trace --plan`: the plans made from the blocks of records as they reached the host equal the plans
    computed offline from the finished trace."""
    import json

    from bench.cli import main
    from datasets_registry import storage

    run = tmp_path / "run"
    assert main(["trace", "--preset", "tiny-cpu", "--steps", "130", "--seq-len", "32", "--batch-size", "2",
                 "--flush-every", "16", "--out", str(run), "--no-register", "--quiet", "--json",
                 "--plan", "ema", "--plan-every", "25", "--plan-spec", "G=4,R=4"]) == 0
    result = json.loads(capsys.readouterr().out)
    doc = json.loads(Path(result["plans"]).read_text())
    offline = offline_plans(storage.load(run / "trace"), "ema", "G=4,R=4", 25)
    assert [p["step"] for p in doc["plans"]] == [p.step for p in offline] == [25, 50, 75, 100, 125]
    for live, off in zip(doc["plans"], offline):
        assert np.allclose(live["estimate"], off.estimate, atol=1e-6)
        assert live["slots"] == off.placement.slots.tolist() and live["replicas"] == off.placement.replicas.tolist()
    assert set(doc["plans"][0]["scores"]) >= {"error_rate", "imbalance", "imbalance_static", "imbalance_oracle"}
