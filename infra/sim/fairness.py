"""Fairness of a shared fleet, as the benchmarks measure it (the simulation and the real-process
fleet alike): Jain's index of each tenant's running chunks over its max-min fair share of the
running chunks given every tenant's demand (the chunks it has left). With equal demands it is
Jain's plain index; a tenant whose whole demand runs counts as served fairly, so a small batch
beside a huge one is not "unfair" for holding only the few slots it can use."""

from __future__ import annotations

from collections.abc import Mapping


def max_min_shares(demands: Mapping[str, int], capacity: int) -> dict[str, float]:
    """Water-filling: each tenant gets min(its demand, an equal split of what is left)."""
    shares: dict[str, float] = {}
    left = float(capacity)
    open_ = sorted(demands, key=lambda t: demands[t])
    while open_:
        equal = left / len(open_)
        tenant = open_[0]
        if demands[tenant] <= equal:
            shares[tenant] = float(demands[tenant])
            left -= demands[tenant]
            open_.pop(0)
        else:
            for rest in open_:
                shares[rest] = equal
            break
    return shares


def jain(values: list[float]) -> float:
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def fair_index(running: Mapping[str, int], demand: Mapping[str, int]) -> float | None:
    """Jain's index of running ÷ max-min share for the tenants with work; None when fewer than
    two tenants have work (nothing to be fair between)."""
    total = sum(n for n in running.values() if n > 0)
    if not total or len([t for t, d in demand.items() if d > 0]) < 2:
        return None
    shares = max_min_shares({t: d for t, d in demand.items() if d > 0}, total)
    ratios = [min(1.0, running.get(t, 0) / share) for t, share in shares.items() if share > 0]
    return jain(ratios)
