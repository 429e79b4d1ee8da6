"""The `learned` keep-hot forecast: which times of day recur, and when workers are warmed."""

from __future__ import annotations

from control_plane.health.forecast import (
    DAY_S,
    Forecast,
    expects_work,
    lead_s,
    recurring_minutes,
)

TODAY = 20_426  # 2025-12-04 as a day number
FORECAST = Forecast(lead_s=300, tolerance_s=900, min_share=0.5, days=7)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> int:
    return (TODAY + day) * DAY_S + hour * 3600 + minute * 60 + second


def nightly(days: range, hour: int = 2, drift_min: int = 0) -> list[int]:
    """A batch at `hour` every day in `days` (relative to today), drifting a minute a day."""
    return [at(day, hour, (day % 2) * drift_min) for day in days]


def test_a_time_of_day_recurs_on_half_the_days_and_a_one_off_does_not() -> None:
    arrivals = [*nightly(range(-7, 0)), at(-3, 15, 30)]  # a week of 02:00 and one 15:30
    assert recurring_minutes(arrivals, today=TODAY, forecast=FORECAST) == [120]
    # Three of the seven days still recur (at least half of the days observed is 4: no).
    assert recurring_minutes(nightly(range(-3, 0)), today=TODAY, forecast=FORECAST) == [120]
    sparse = [at(-7, 9), at(-5, 9), at(-2, 9)]
    assert recurring_minutes(sparse, today=TODAY, forecast=FORECAST) == []
    # One day of history is no pattern; today's own arrivals are not history.
    assert recurring_minutes([at(-1, 9), at(0, 9)], today=TODAY, forecast=FORECAST) == []


def test_arrivals_that_drift_within_the_tolerance_are_one_slot() -> None:
    drifting = nightly(range(-6, 0), hour=9, drift_min=12)  # 09:00, 09:12, 09:00, ...
    assert recurring_minutes(drifting, today=TODAY, forecast=FORECAST) == [540, 552]
    # Two times 40 minutes apart on alternate days are two slots, each on half the days.
    alternating = nightly(range(-6, 0), hour=9, drift_min=40)
    assert recurring_minutes(alternating, today=TODAY, forecast=FORECAST) == [540, 580]
    wandering = [at(day, 9, 20 * (day + 6)) for day in range(-6, 0)]  # 20 minutes later a day
    assert recurring_minutes(wandering, today=TODAY, forecast=FORECAST) == []


def test_workers_are_warmed_one_lead_ahead_until_the_batch_comes() -> None:
    history = nightly(range(-7, 0), hour=9)
    assert not expects_work(history, now=at(0, 8, 54), forecast=FORECAST)
    assert expects_work(history, now=at(0, 8, 55), forecast=FORECAST)  # 300 s ahead
    assert expects_work(history, now=at(0, 9, 10), forecast=FORECAST)  # late: still waited for
    assert not expects_work(history, now=at(0, 9, 16), forecast=FORECAST)  # given up
    came = [*history, at(0, 9, 2)]
    assert expects_work(came, now=at(0, 9, 1), forecast=FORECAST)
    # Once today's batch has come, its work keeps the workers; the forecast lets go.
    assert not expects_work(came, now=at(0, 9, 3), forecast=FORECAST)
    early = [*history, at(0, 8, 50)]  # came before the lead even began
    assert not expects_work(early, now=at(0, 8, 58), forecast=FORECAST)


def test_a_slot_just_after_midnight_is_led_into_from_the_evening_before() -> None:
    history = nightly(range(-7, 0), hour=0, drift_min=2)  # 00:00 and 00:02
    assert expects_work(history, now=at(0, 0) - 120, forecast=FORECAST)  # 23:58 yesterday
    assert not expects_work(history, now=at(0, 0) - 600, forecast=FORECAST)


def test_no_history_expects_nothing() -> None:
    assert not expects_work([], now=at(0, 12), forecast=FORECAST)


def test_the_lead_is_the_slowest_recent_cold_start_and_a_margin() -> None:
    assert lead_s([], margin_s=60, fallback_s=300) == 300  # nothing measured yet
    assert lead_s([41.2, 95.0, 58.3], margin_s=60, fallback_s=300) == 155
    assert lead_s([20.0], margin_s=0, fallback_s=300) == 20  # shorter than the fallback too
