"""`HOTBATCH_KEEP_HOT_SCHEDULE`: when the tick keeps workers warm.

    always | never | pending | learned | WINDOW[, …]  (`;` separates as well as `,`)
    WINDOW = [DAY | DAY-DAY] HH:MM-HH:MM               (UTC; no day means every day)

`pending` and `learned` may stand beside windows and each other ("learned, Mon-Fri
08:00-20:00": inside the windows, and outside them ahead of the batches that recur at the same
time of day, `health/forecast.py`). A window whose end is not after its start crosses midnight:
`Fri 22:00-02:00` runs from Friday 22:00 to Saturday 02:00. `24:00` is the end of a day.

Pure and free of control-plane imports: `Settings` validates the value with it at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WINDOW = re.compile(
    r"^(?:(?P<days>[a-z]+(?:\s*-\s*[a-z]+)?)\s+)?"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$",
    re.IGNORECASE,
)
_EXPECTED = (
    "expected `always`, `never`, `pending`, `learned`, or UTC windows such as "
    "`Mon-Fri 08:00-20:00, Sat 10:00-14:00`"
)
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # Monday is 0, as in `datetime.weekday()`
    start: int  # minutes after midnight
    end: int  # minutes after midnight; not after `start` means the window crosses midnight

    def contains(self, now: datetime) -> bool:
        day, minute = now.weekday(), now.hour * 60 + now.minute
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Crossing midnight: the evening part belongs to the named day, the morning part to
        # the day after it.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


@dataclass(frozen=True)
class Schedule:
    always: bool = False
    pending: bool = False
    learned: bool = False  # ahead of recurring batches (the tick asks the forecast)
    windows: tuple[Window, ...] = ()


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; a ValueError names the part that is wrong and the expected forms.
    Empty entries (a trailing comma) are ignored."""
    parts = [part.strip() for part in re.split(r"[,;]", text) if part.strip()]
    if not parts:
        raise _bad(text, "empty keep-hot schedule")
    words = [part.lower() for part in parts]
    if {"always", "never"} & set(words):
        if len(parts) > 1:
            raise _bad(text, "`always` and `never` must stand alone")
        return Schedule(always=words[0] == "always")
    windows = tuple(
        _window(part, text) for part in parts if part.lower() not in ("pending", "learned")
    )
    return Schedule(pending="pending" in words, learned="learned" in words, windows=windows)


def in_schedule(
    schedule: str | Schedule, now_utc: datetime, work_waiting: bool, work_expected: bool = False
) -> bool:
    """Whether workers should be kept warm at `now_utc` (naive datetimes are taken as UTC).
    `work_expected`: the forecast expects a recurring batch soon (used by `learned` only)."""
    parsed = parse_schedule(schedule) if isinstance(schedule, str) else schedule
    if parsed.always:
        return True
    if parsed.pending and work_waiting:
        return True
    if parsed.learned and work_expected:
        return True
    now = now_utc.astimezone(UTC) if now_utc.tzinfo is not None else now_utc
    return any(window.contains(now) for window in parsed.windows)


def _window(part: str, text: str) -> Window:
    match = _WINDOW.match(part)
    if match is None:
        raise _bad(text, f"cannot read {part!r}")
    days = _days(match["days"], text) if match["days"] else frozenset(range(7))
    start, end = _minute(match["start"], text), _minute(match["end"], text)
    if start == MINUTES_PER_DAY:
        raise _bad(text, f"{part!r} starts at 24:00")
    if start == end:
        raise _bad(text, f"{part!r} starts and ends at the same time (a whole day: 00:00-24:00)")
    return Window(days=days, start=start, end=end)


def _days(spec: str, text: str) -> frozenset[int]:
    first, _, last = (name.strip() for name in spec.partition("-"))
    start = _day(first, text)
    if not last:
        return frozenset({start})
    stop = _day(last, text)
    # A range may wrap the week: `Fri-Mon` is Friday, Saturday, Sunday and Monday.
    return frozenset((start + offset) % 7 for offset in range((stop - start) % 7 + 1))


def _day(name: str, text: str) -> int:
    if name.lower() in DAYS:
        return DAYS.index(name.lower())
    if name.lower() in _FULL_DAYS:
        return _FULL_DAYS.index(name.lower())
    raise _bad(text, f"unknown day {name!r} (days are Mon Tue Wed Thu Fri Sat Sun)")


def _minute(clock: str, text: str) -> int:
    hours, minutes = (int(value) for value in clock.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise _bad(text, f"{clock!r} is not a time (00:00-24:00)")
    return hours * 60 + minutes


def _bad(text: str, problem: str) -> ValueError:
    return ValueError(f"keep-hot schedule {text!r}: {problem}; {_EXPECTED}")
