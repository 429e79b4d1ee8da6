"""A kick: work was just queued (a split's chunks, a result, a cancel), so whoever consumes the
event queues should look now.

In AWS nothing needs waking: SQS hands the event to its function within milliseconds (the
event-source mappings in template.yaml), so the default kick does nothing. The local stack hands
`create_app` its own kick, which wakes its queue consumers instead of letting them wait out
their poll.
"""

from __future__ import annotations

from collections.abc import Callable

Kick = Callable[[str], None]


def no_kick(reason: str) -> None:
    """Nothing to wake (AWS, and tests that drain the queues by hand)."""
