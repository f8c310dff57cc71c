
from bench.states import detect_states
from datasets_registry.synthetic import switching_trace


def test_detector_finds_a_known_switch_point_for_16_and_128_experts():
    for kw in (dict(experts=16, tokens=256, records=3000, switch=1200, drift=0.03, seed=2),
               dict(experts=128, tokens=4096, records=800, switch=400, drift=0.08, step_every=10, seed=1)):
        t = switching_trace(**kw)
        stable = detect_states(t.proportions, t.steps)
        switch = t.card.extra["switch_record"]
        margin = max(20, len(t.steps) // 20)
        for l in range(t.layers):
            assert not stable[: switch - margin, l].any(), kw
            assert stable[switch + margin :, l].all(), kw


def test_a_trace_that_never_settles_is_all_transient():
    t = switching_trace(records=600, switch=600, drift=0.08)
    assert not detect_states(t.proportions, t.steps).any()


def test_smartmoe_settles_after_the_first_thousands_of_iterations(smartmoe):
    stable = detect_states(smartmoe.proportions, smartmoe.steps)
    early = stable[smartmoe.steps < 500].mean()
    late = stable[smartmoe.steps > 2500].mean()
    assert early < 0.2 and late > 0.9
