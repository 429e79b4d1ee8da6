"""Keep workers hot inside the keep-hot schedule, and store a health sample every tick.

Inside the schedule, with no chunk pending or in flight (chunks, backfill ones included, keep
workers busy on their own: dispatch sends backfill whenever nothing else waits), the tick sends
one round of `HOTBATCH_KEEP_HOT_WORKERS` health jobs. Queued jobs make RunPod scale out to that
many workers, and a job every tick resets each warm worker's idle timer, so set the endpoint's
idle timeout above the tick's interval (a 60 s tick wants an idle timeout over a minute). A new
round goes out only once every job of the previous one has finished, so a slow cold start or a
stalled endpoint never piles pings up: at most K ping jobs exist at any time. Nothing is sent
while the breaker is open. Finished pings are harvested: their output is the worker's health
report (GPU, memory, KV cache), kept in the sample.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from control_plane.clients.runpod import EndpointError, JobGone
from control_plane.health.forecast import DAY_S, Forecast, expects_work, lead_s
from control_plane.health.sample import (
    SAMPLE_TTL_S,
    HealthSample,
    JobCounts,
    WorkerCounts,
    WorkerReading,
)
from control_plane.health.schedule import in_schedule, parse_schedule
from control_plane.scheduler.policy import SchedulerState
from control_plane.store import health as store
from handler.contract import HealthInput

if TYPE_CHECKING:
    from control_plane.scheduler.context import TickContext

log = logging.getLogger("control_plane.keephot")

PING_EXECUTION_TIMEOUT_S = 60
# RunPod drops a ping still queued after this; a cold start of a large model takes minutes.
PING_TTL_S = 600
# A round older than this is given up (its jobs cancelled) even if RunPod still lists them.
PING_GIVE_UP_S = PING_TTL_S + 60
COLD_STARTS_KEPT = 5  # the lead follows the slowest of these: an image or model change shows soon
FINAL_JOB = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


def keep_hot(ctx: TickContext, state: SchedulerState) -> dict[str, Any]:
    """The tick's keep-hot step: harvest, maybe ping, sample. Returns what it did."""
    try:
        return _keep_hot(ctx, state)
    except Exception as exc:
        # Keep-hot is an aid, not the job: a failure here (DynamoDB throttling, an odd RunPod
        # answer) must not cost the tick its policy save; the next tick samples again.
        log.exception("keep-hot step failed", extra={"error": str(exc)})
        return {"error": str(exc)}


def _keep_hot(ctx: TickContext, state: SchedulerState) -> dict[str, Any]:
    table, settings = ctx.aws.table, ctx.settings
    sample = _queue_sample(ctx, state)
    before = store.load_pings(table)
    schedule = parse_schedule(settings.keep_hot_schedule)
    if schedule.learned:
        sample.lead_s = _lead_s(ctx, before)
        sample.work_expected = _work_expected(ctx, sample.lead_s)
    sample.in_schedule = in_schedule(
        schedule,
        datetime.fromtimestamp(ctx.now, UTC),
        sample.work_waiting,
        work_expected=bool(sample.work_expected),
    )
    pings = before
    # While the breaker is open the endpoint is left alone entirely (no /health, no polls).
    if state.breaker != "open":
        _read_endpoint(ctx, sample)
    if sample.workers is not None:
        pings = _harvest(ctx, pings, sample)
    pings = _take_work_readings(ctx, pings, sample)
    reason = _why_no_ping(ctx, state, sample, pings)
    sent: list[str] = []
    if reason is None:
        sent = _send_round(ctx, settings.keep_hot_workers)
    if sent:
        workers = sample.workers
        cold = workers is not None and workers.warm == 0 and workers.initializing == 0
        pings = pings.model_copy(
            update={
                "jobs": sent,
                "sent_at": ctx.now,
                "rounds": pings.rounds + 1,
                "sent_cold": cold,
            }
        )
    if not store.save_pings(table, before, pings, now=ctx.now) and sent:
        _cancel(ctx, sent)  # another tick moved the round meanwhile: its round stands
        sent = []
        pings = before
    sample.pings_sent, sample.pings_outstanding = len(sent), len(pings.jobs)
    store.put_sample(table, sample.model_dump())
    return {
        "in_schedule": sample.in_schedule,
        "work_waiting": sample.work_waiting,
        "work_expected": sample.work_expected,
        "lead_s": sample.lead_s,
        "warm": sample.workers.warm if sample.workers else None,
        "pings_sent": len(sent),
        "pings_outstanding": len(pings.jobs),
        "readings": len(sample.readings),
        "skipped": reason,
    }


def _queue_sample(ctx: TickContext, state: SchedulerState) -> HealthSample:
    table, endpoint_id = ctx.aws.table, ctx.runpod.endpoint_id
    pending, in_flight = store.queue_counts(table, endpoint_id)
    ages: dict[str, int | None] = {"high": None, "normal": None, "backfill": None}
    if pending:
        for priority in ages:
            chunk = store.oldest_pending(table, endpoint_id, priority)
            if chunk is not None:
                ages[priority] = max(0, ctx.now - int(chunk.get("created_at", ctx.now)))
    urgent = [age for age in (ages["high"], ages["normal"]) if age is not None]
    return HealthSample(
        at=ctx.now,
        expires_at=ctx.now + SAMPLE_TTL_S,
        schedule=ctx.settings.keep_hot_schedule,
        in_schedule=False,
        keep_hot_workers=ctx.settings.keep_hot_workers,
        work_waiting=bool(pending or in_flight),
        pending_chunks=pending,
        in_flight_chunks=in_flight,
        oldest_pending_age_s=max(urgent) if urgent else None,
        oldest_backfill_age_s=ages["backfill"],
        breaker=state.breaker,
        window=state.window,
        failures=state.failures,
    )


def _lead_s(ctx: TickContext, pings: store.PingRound) -> int:
    """The `learned` lead: measured from the cold starts of pings sent with no worker warm,
    unless the operator fixed it."""
    settings = ctx.settings
    if not settings.keep_hot_lead_measured:
        return settings.keep_hot_lead_s
    return lead_s(
        pings.cold_starts_s,
        margin_s=settings.keep_hot_lead_margin_s,
        fallback_s=settings.keep_hot_lead_s,
    )


def _work_expected(ctx: TickContext, lead: int) -> bool:
    """The forecast from the batch arrivals of the last days (`learned`)."""
    settings = ctx.settings
    forecast = Forecast(lead_s=lead, tolerance_s=settings.keep_hot_tolerance_s)
    arrivals = store.arrivals_since(ctx.aws.table, since=ctx.now - (forecast.days + 1) * DAY_S)
    return expects_work(arrivals, now=ctx.now, forecast=forecast)


def _read_endpoint(ctx: TickContext, sample: HealthSample) -> None:
    try:
        health = ctx.runpod.health()
    except EndpointError as exc:
        # Not counted by the breaker: dispatch and polling judge the endpoint on real work.
        log.warning("RunPod health read failed", extra={"error": str(exc)})
        sample.runpod_error = str(exc)[:500]
        return
    sample.workers = WorkerCounts.model_validate(health.get("workers") or {})
    sample.jobs = JobCounts.model_validate(health.get("jobs") or {})


def _take_work_readings(
    ctx: TickContext, pings: store.PingRound, sample: HealthSample
) -> store.PingRound:
    """The GPU readings workers took over the chunks recorded since the last sample."""
    items = store.work_readings_between(ctx.aws.table, after=pings.work_read_until, until=ctx.now)
    if not items:
        return pings
    sample.readings.extend(WorkerReading.model_validate(item) for item in items)
    return pings.model_copy(update={"work_read_until": max(int(item["at"]) for item in items)})


def _harvest(ctx: TickContext, pings: store.PingRound, sample: HealthSample) -> store.PingRound:
    """Poll the round in flight: finished jobs leave it, completed ones yield readings."""
    if not pings.jobs:
        return pings
    still: list[str] = []
    cold_starts = list(pings.cold_starts_s)
    for job_id in pings.jobs:
        try:
            job = ctx.runpod.status(job_id)
        except JobGone:
            continue
        except EndpointError as exc:
            log.info("ping status failed", extra={"job_id": job_id, "error": str(exc)})
            still.append(job_id)
            continue
        status = job.get("status")
        if status not in FINAL_JOB:
            still.append(job_id)
        elif status == "COMPLETED":
            if pings.sent_cold and job.get("delayTime") is not None:
                # Sent with no worker warm or starting, its wait in the queue was a cold start.
                cold_starts.append(round(float(job["delayTime"]) / 1000, 1))
            reading = WorkerReading.from_report(job.get("output"), worker_id=job.get("workerId"))
            if reading is not None:
                sample.readings.append(reading)
        else:
            log.warning("keep-hot ping ended badly", extra={"job_id": job_id, "status": status})
    if still and ctx.now - pings.sent_at > PING_GIVE_UP_S:
        log.warning("keep-hot round given up", extra={"job_ids": still})
        _cancel(ctx, still)
        still = []
    update: dict[str, Any] = {"jobs": still, "cold_starts_s": cold_starts[-COLD_STARTS_KEPT:]}
    if sample.readings:
        update.update(last_reading=sample.readings[-1].model_dump(), last_reading_at=ctx.now)
    return pings.model_copy(update=update)


def _why_no_ping(
    ctx: TickContext, state: SchedulerState, sample: HealthSample, pings: store.PingRound
) -> str | None:
    if ctx.settings.keep_hot_workers <= 0:
        return "keep_hot_workers is 0"
    if not sample.in_schedule:
        return "out of schedule"
    if sample.work_waiting:
        return "chunks keep the workers busy"
    if state.breaker == "open":
        return "breaker open"
    if sample.workers is None:
        return "RunPod health unreadable"
    if pings.jobs:
        return "previous round unfinished"
    return None


def _send_round(ctx: TickContext, count: int) -> list[str]:
    sent: list[str] = []
    for _ in range(count):
        try:
            sent.append(
                ctx.runpod.run(
                    HealthInput(action="health").model_dump(),
                    execution_timeout_s=PING_EXECUTION_TIMEOUT_S,
                    ttl_s=PING_TTL_S,
                )
            )
        except EndpointError as exc:
            log.warning("keep-hot ping failed", extra={"error": str(exc)})
            break
    if sent:
        log.info("keep-hot round sent", extra={"job_ids": sent})
    return sent


def _cancel(ctx: TickContext, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            ctx.runpod.cancel(job_id)
        except (EndpointError, JobGone):
            pass  # finished or gone: either way it no longer holds a worker
