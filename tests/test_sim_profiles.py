"""Simulator profiles (``ZIMG_SIM_PROFILE``): the arithmetic behind them, and the simulator obeying them.

The figures are estimates from FLOP counts and published GPU figures (see ``sim_profiles``'s docstring);
these tests pin the arithmetic so a change to a constant shows up, and check the physics' consequences.
"""

from __future__ import annotations

import pytest

from workers.inference.backends.base import InferenceRequest, OutOfMemory
from workers.inference.backends.sim import SimBackend, SimConfig
from workers.inference.backends.sim_profiles import NAMED, flop_per_image, profile
from workers.inference.batcher import Batcher


def test_one_1024_image_is_about_half_a_petaflop_and_512_about_a_quarter_of_it() -> None:
    assert flop_per_image(1024, 1024) == pytest.approx(0.49e15, rel=0.03)
    assert flop_per_image(512, 512) / flop_per_image(1024, 1024) == pytest.approx(0.25, abs=0.01)


def test_h200_at_1024_is_about_0_6_s_per_image_and_batching_gains_little() -> None:
    p = profile("h200-1024")
    assert p.b == pytest.approx(0.49e15 / 790e12, rel=0.03)
    gain = (8 / p.latency(8)) / (1 / p.latency(1))
    assert 1.0 < gain < 1.25
    assert p.max_batch >= 32  # 139 GiB holds far more than --max-batch 8


def test_h200_at_512_gains_much_more_from_batching() -> None:
    small, big = profile("h200-512"), profile("h200-1024")
    gain = (8 / small.latency(8)) / (1 / small.latency(1))
    assert gain > 1.4 and gain > (8 / big.latency(8)) / (1 / big.latency(1))


def test_rtx4090_takes_the_published_2_3_s_and_holds_no_batch_of_two_at_1024() -> None:
    p = profile("rtx4090-1024")
    assert p.latency(1) == pytest.approx(2.3)
    assert p.max_batch == 1
    assert profile("rtx4090-512").max_batch >= 2  # a quarter of the activations


@pytest.mark.parametrize("name", ["a100-1024", "h200", "h200-big", ""])
def test_an_unknown_profile_is_refused_naming_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match="profile"):
        profile(name)


def test_the_simulator_follows_its_profile() -> None:
    cfg = SimConfig(profile="rtx4090-1024", scale=0.001)
    assert cfg.latency(1) == pytest.approx(0.0023)
    sim = SimBackend(cfg)
    one = InferenceRequest(prompt="p", width=64, height=64, num_inference_steps=1)
    assert len(sim.generate([one])) == 1
    with pytest.raises(OutOfMemory, match="rtx4090-1024"):
        sim.generate([one, one])
    assert sim.health()["config"]["physics"]["estimate"] is True
    assert SimConfig.from_env({"ZIMG_SIM_PROFILE": "h200-512"}).physics == profile("h200-512")


def test_every_named_profile_is_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name in NAMED:
        assert f"`{name}`" in readme


def test_the_batcher_learns_the_4090s_limit_after_one_failed_call() -> None:
    sim = SimBackend(SimConfig(profile="rtx4090-1024", scale=0.01))
    batcher = Batcher(sim, max_batch=8, max_wait_s=0.0)
    try:
        hold = batcher.submit(InferenceRequest(prompt="hold", width=128, height=64, num_inference_steps=1))
        while hold.started is None:
            pass
        tickets = [batcher.submit(InferenceRequest(prompt="p", seed=i, width=64, height=64)) for i in range(6)]
        for ticket in [hold, *tickets]:
            ticket.future.result(timeout=30)
    finally:
        batcher.close()
    assert batcher.stats["failed_calls"] == 1 and batcher.capacity.limit((64, 64)) == 1
