"""`learned` in the keep-hot schedule: warm workers one cold start ahead of the batches that
recur.

Teams run the same pipelines at the same time of day (a nightly evaluation, the 09:00 report
run), so the days before predict most of today's batches. A minute of the day *recurs* when
batches arrived within `tolerance_s` of it on at least `min_share` of the days observed (two
days at least; `days` back at most). Workers are kept warm from `lead_s` before each recurring
minute (one cold start and a tick: the worker must be ready when the batch comes) until a batch
has come for it today, or until `tolerance_s` after it. A slot whose batch has come is left to
that batch's work and then to the endpoint's idle timeout, so a right forecast costs the cold
start scale-to-zero would pay anyway, paid earlier. Ad-hoc batches are not forecast.

Pure and free of control-plane imports: the tick reads the arrivals through the store, and the
keep-hot day benchmark calls `expects_work` and `lead_s` on its compressed clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DAY_S = 86_400
MINUTES_PER_DAY = 1_440


@dataclass(frozen=True)
class Forecast:
    lead_s: int = 300  # warm this long before a recurring minute: a cold start and a tick
    tolerance_s: int = 900  # arrivals this close count as the same slot
    min_share: float = 0.5  # of the days observed, at least two
    days: int = 7  # the history looked at


def lead_s(cold_starts_s: Sequence[float], *, margin_s: int, fallback_s: int) -> int:
    """How long before a recurring batch to start warming: the slowest of the cold starts
    measured lately plus `margin_s` (a tick interval: the warm-up starts at the first tick
    inside the lead), or `fallback_s` while none has been measured. A lead shorter than a cold
    start leaves the batch waiting; each second longer is a second of warm idle per forecast
    batch, which is the whole cost of a right forecast."""
    if not cold_starts_s:
        return fallback_s
    return math.ceil(max(cold_starts_s)) + margin_s


def recurring_minutes(arrivals: Iterable[int], *, today: int, forecast: Forecast) -> list[int]:
    """Minutes of the day (UTC) at which batches recur, from the arrivals (Unix seconds) on the
    `forecast.days` days before day `today` (Unix seconds // DAY_S). Each is a minute some
    batch arrived at, so a slot whose batches drift within the tolerance gives the span from
    its earliest to its latest minute."""
    first_day = today - forecast.days
    masks = [0] * MINUTES_PER_DAY  # per minute of the day: a bit per day with an arrival
    seen_days: set[int] = set()
    for at in arrivals:
        day = at // DAY_S
        if first_day <= day < today:
            masks[(at % DAY_S) // 60] |= 1 << (day - first_day)
            seen_days.add(day)
    if not seen_days:
        return []
    observed = today - min(seen_days)  # days since the history began, empty ones included
    needed = max(2, math.ceil(forecast.min_share * observed))
    reach = forecast.tolerance_s // 60
    recurring = []
    for minute, mask in enumerate(masks):
        if not mask:
            continue
        days = 0
        for offset in range(-reach, reach + 1):
            days |= masks[(minute + offset) % MINUTES_PER_DAY]
        if days.bit_count() >= needed:
            recurring.append(minute)
    return recurring


def expects_work(arrivals: Sequence[int], *, now: int, forecast: Forecast) -> bool:
    """Whether workers should be warm at `now` for a recurring batch that has not come yet.
    `arrivals` are batch creation times (Unix seconds), today's included."""
    today = now // DAY_S
    recurring = recurring_minutes(arrivals, today=today, forecast=forecast)
    if not recurring:
        return False
    recent = sorted(at for at in arrivals if at >= now - DAY_S - forecast.tolerance_s)
    # A slot late in the evening is led into from the day before, one early in the morning
    # from the evening: its occurrences yesterday, today and tomorrow are all looked at.
    for day in (today - 1, today, today + 1):
        for minute in recurring:
            due = day * DAY_S + minute * 60
            if not due - forecast.lead_s <= now <= due + forecast.tolerance_s:
                continue
            came = bisect.bisect_left(recent, due - forecast.tolerance_s)
            if came == len(recent) or recent[came] > now:
                return True  # due, and no batch has come for it yet
    return False
