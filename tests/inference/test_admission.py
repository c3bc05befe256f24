"""Admission control in front of an engine: refusals at the limit, the AIMD limit following
demand up and down and halving on latency, cancellations freeing slots. The engine here is
a stand-in that answers after a fixed delay (the service tests use the real one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from pipeline.inference import AdmissionControl, AdmissionSettings

pytestmark = pytest.mark.unit


class _Engine:
    """Answers every request after `delay_s`, like the engine's future does."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.cancelled = 0

    def predict(self, model_name: str, x, **_):
        future = asyncio.get_running_loop().create_future()
        ok = SimpleNamespace(success=True, rejected=False, error_type=None, output=x)

        def answer() -> None:
            if not future.done():
                future.set_result(ok)

        asyncio.get_running_loop().call_later(self.delay_s, answer)
        future.add_done_callback(
            lambda f: setattr(self, "cancelled", self.cancelled + f.cancelled())
        )
        return future

    def predict_many(self, model_name: str, rows, **_):
        self.batches = getattr(self, "batches", 0) + 1
        return asyncio.gather(*(self.predict(model_name, x) for x in rows))


async def _users(control: AdmissionControl, users: int, per_user: int) -> list:
    async def user() -> list:
        return [await control.predict("m", 1.0) for _ in range(per_user)]

    results = await asyncio.gather(*(user() for _ in range(users)))
    return [r for rs in results for r in rs]


def test_the_limit_follows_demand_up_and_down_while_latency_is_healthy() -> None:
    settings = AdmissionSettings(
        max_concurrency=64,
        min_concurrency=2,
        adjust_every=5,
        target_p95_ms=1000.0,
        max_waiting=64,  # a demand step waits for the limit to grow instead of failing
        queue_timeout_ms=5000.0,
    )

    async def scenario():
        control = AdmissionControl(_Engine(0.001), settings)
        limits = [control.limiter.limit]
        for users, per_user in ((1, 40), (16, 40), (1, 40)):
            results = await _users(control, users, per_user)
            assert all(r.success for r in results)
            limits.append(control.limiter.limit)
        return limits, control.get_stats()

    limits, stats = asyncio.run(scenario())
    start, after_one, after_sixteen, after_one_again = limits
    assert start == 64
    assert after_one <= 4  # 2x-4x the demand of one user (floor 2)
    assert after_sixteen >= 16  # rose with the load: 16 users in flight at once
    assert after_one_again <= 4  # and fell after it
    assert stats.scale_ups >= after_sixteen - after_one
    assert stats.scale_downs > stats.overload_scale_downs == 0
    assert stats.rejected == 0 and stats.timed_out == 0


def test_slow_answers_halve_the_limit_down_to_its_floor() -> None:
    settings = AdmissionSettings(
        max_concurrency=32, min_concurrency=2, adjust_every=4, target_p95_ms=5.0, max_waiting=64
    )

    async def scenario():
        control = AdmissionControl(_Engine(0.02), settings)  # 20 ms > 5 ms target
        await _users(control, 8, 4)
        return control.get_stats()

    stats = asyncio.run(scenario())
    assert stats.limit == 2 and stats.overload_scale_downs >= 3


def test_past_the_limit_a_request_is_refused_at_once_not_queued() -> None:
    settings = AdmissionSettings(max_concurrency=2, min_concurrency=2, max_waiting=0)

    async def scenario():
        control = AdmissionControl(_Engine(0.05), settings)
        futures = [control.predict("m", float(i)) for i in range(5)]
        refused_now = [f.done() for f in futures]
        return refused_now, await asyncio.gather(*futures), control.get_stats()

    refused_now, results, stats = asyncio.run(scenario())
    assert refused_now == [False, False, True, True, True]
    assert [r.success for r in results] == [True, True, False, False, False]
    for result in results[2:]:
        assert result.rejected and result.error_type == "AdmissionRejectedError"
        assert "admission rejected: 2 jobs in flight (limit 2)" in result.error
    assert stats.admitted == 2 and stats.rejected == 3 and stats.in_flight == 0


def test_a_cancelled_request_frees_its_slot_and_cancels_the_engine_request() -> None:
    settings = AdmissionSettings(max_concurrency=1, min_concurrency=1, max_waiting=1)

    async def scenario():
        engine = _Engine(0.05)
        control = AdmissionControl(engine, settings)
        first = control.predict("m", 1.0)
        waiting = control.predict("m", 2.0)  # waits for the slot
        await asyncio.sleep(0)
        waiting.cancel()
        first.cancel()
        await asyncio.sleep(0.01)
        again = await control.predict("m", 3.0)
        return engine.cancelled, again, control.get_stats()

    cancelled, again, stats = asyncio.run(scenario())
    assert cancelled == 1 and again.success
    assert stats.in_flight == 0 and stats.waiting == 0
    assert stats.completed == 1 and stats.failed == 0  # cancellations are not observed


@pytest.mark.parametrize(
    "values,field",
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"min_concurrency": 8, "max_concurrency": 4}, "min_concurrency"),
        ({"target_p95_ms": 0}, "target_p95_ms"),
        ({"adjust_every": 1.5}, "adjust_every"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"enabled": "maybe"}, "enabled"),
    ],
)
def test_invalid_settings_name_the_field(values: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AdmissionSettings.from_dict(values)


def test_a_request_of_several_rows_is_admitted_or_refused_whole() -> None:
    settings = AdmissionSettings(max_concurrency=8, min_concurrency=8, max_waiting=0)

    async def scenario():
        engine = _Engine(0.05)
        control = AdmissionControl(engine, settings, largest_request=8)
        singles = [control.predict("m", 1.0) for _ in range(5)]
        refused = await control.predict_many("m", [2.0] * 4)  # 3 slots free: none is taken
        in_flight = control.limiter.get_stats().in_flight
        await asyncio.gather(*singles)
        admitted = await control.predict_many("m", [3.0] * 8)  # idle: all 8 at once
        return engine, refused, in_flight, admitted, control.get_stats()

    engine, refused, in_flight, admitted, stats = asyncio.run(scenario())
    assert len(refused) == 4 and all(r.rejected for r in refused)
    assert "admission rejected: 5 jobs in flight (limit 8)" in refused[0].error
    assert "this request of 4 rows needs 4 slots" in refused[0].error
    assert in_flight == 5 and engine.batches == 1  # the refused rows never reached it
    assert [r.output for r in admitted] == [3.0] * 8
    assert stats.in_flight == 0 and stats.rejected == 1 and stats.admitted == 6


def test_a_waiting_request_of_several_rows_takes_its_slots_at_once_in_turn() -> None:
    settings = AdmissionSettings(
        max_concurrency=8, min_concurrency=8, max_waiting=4, queue_timeout_ms=2000.0
    )

    async def scenario():
        control = AdmissionControl(_Engine(0.05), settings, largest_request=8)
        singles = [control.predict("m", 1.0) for _ in range(6)]
        large = control.predict_many("m", [2.0] * 6)  # waits for 6 slots
        await asyncio.sleep(0)
        behind = control.predict("m", 3.0)  # first come, first served: waits behind it
        await asyncio.sleep(0.01)
        waiting = control.limiter.get_stats().waiting
        results = await asyncio.gather(*singles, large, behind)
        return waiting, results, control.get_stats()

    waiting, results, stats = asyncio.run(scenario())
    assert waiting == 2
    *singles, large, behind = results
    assert all(r.success for r in singles) and behind.success
    assert [r.output for r in large] == [2.0] * 6
    assert stats.in_flight == 0 and stats.timed_out == 0 and stats.peak_in_flight <= 8


def test_the_limit_never_falls_below_the_largest_request() -> None:
    settings = AdmissionSettings(max_concurrency=64, min_concurrency=2, adjust_every=5)

    async def scenario():
        control = AdmissionControl(_Engine(0.001), settings, largest_request=20)
        await _users(control, 1, 40)  # low demand: the limit halves toward its floor
        limit = control.limiter.limit
        return limit, await control.predict_many("m", [1.0] * 20), control.get_stats()

    limit, results, stats = asyncio.run(scenario())
    assert limit == 20 and stats.min_workers == 20 and stats.scale_downs >= 1
    assert all(r.success for r in results)
