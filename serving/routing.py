"""Which version of a model answers a request: weights kept in Redis, one reader and writer for API and command.

A model name routes to its versions by integer weights in the hash `{prefix}:routes:<name>` (`v3=90 v4=10`),
set by `python -m model_tools route`. Without weights a name goes to its only live version, and with
several to the lowest (versions compare as numbers where they are numbers: v9 < v10), so a new version
gets no traffic until it is routed to. Weights are a preference among the live versions: when none of the
weighted versions has a live worker, the name is served as without weights (the API logs a warning and
counts it, imgcls_route_fallbacks_total).
"""

from __future__ import annotations

import random
import re

from serving.fleet_scripts import live_worker_counts, model_ages
from serving.protocol import FleetKeys, model_id


class RoutingError(ValueError):
    """Weights that cannot be set: a message for the operator."""


def read_weights(client, fleet: FleetKeys, name: str) -> dict[str, int]:
    return {version.decode(): int(weight) for version, weight in client.hgetall(fleet.routes(name)).items()}


def write_weights(client, fleet: FleetKeys, name: str, weights: dict[str, int], worker_timeout: float) -> None:
    """Replace a name's weights at once; refused unless every version given traffic has a live worker now."""
    if not weights or any(weight < 0 for weight in weights.values()) or sum(weights.values()) == 0:
        raise RoutingError("weights must be whole numbers >= 0, at least one above 0, like v3=90 v4=10")
    stranded = _without_live_workers(client, fleet, name, [v for v, weight in weights.items() if weight],
                                     worker_timeout)
    if stranded:
        raise RoutingError(f"{name}@{stranded[0]} has no live worker: start its workers, wait until they are "
                           f"ready, then route to it; {live_models(client, fleet, worker_timeout)}")
    pipe = client.pipeline(transaction=True)  # one key: readers see the old weights or the new, never a mix
    pipe.delete(fleet.routes(name))
    pipe.hset(fleet.routes(name), mapping=weights)
    pipe.execute()


def _without_live_workers(client, fleet: FleetKeys, name: str, versions: list[str],
                          worker_timeout: float) -> list[str]:
    """Those of a name's `versions` that have no live worker now, in one round trip."""
    counts = live_worker_counts(client, prefix=fleet.prefix, model_ids=[model_id(name, v) for v in versions],
                                worker_timeout=worker_timeout)
    return [version for version in versions if counts[model_id(name, version)] == 0]


def live_models(client, fleet: FleetKeys, worker_timeout: float) -> str:
    """Which name@version have live workers, for a refusal: a worker whose model card names its model otherwise
    serves under that name (MODEL_NAME sets it)."""
    live = sorted(model for model, age in model_ages(client, fleet=fleet).items() if age <= worker_timeout)
    return (f"live now: {', '.join(live)} (a worker serves under MODEL_NAME, else its model card's name)" if live
            else "no model version has a live worker now")


def choose_version(weights: dict[str, int], live_versions: list[str], rng: random.Random = random) -> str | None:
    """The version one request goes to, or None when the name has no live version.

    Weights are a preference among live versions: the weighted ones with a live worker share the traffic by
    their weights; when none of them is live, the request goes where it would without weights (the lowest live
    version), so a route to a version whose workers are gone never strands a name that has another live one.
    """
    routed = {version: weight for version, weight in weights.items() if weight > 0 and version in live_versions}
    if routed:
        return rng.choices(list(routed), weights=list(routed.values()))[0]
    return min(live_versions, key=version_order) if live_versions else None


def is_fallback(weights: dict[str, int], chosen: str) -> bool:
    """Whether `chosen`, the version choose_version gave, is a fallback: the route prefers others (none of which,
    then, has a live worker)."""
    return any(weight > 0 for weight in weights.values()) and weights.get(chosen, 0) <= 0


def version_order(version: str) -> tuple:
    """v9 before v10: digits compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", version) if part)
