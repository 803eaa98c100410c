"""The side-by-side table of issue 28: per system, each client count's requests/s with its latency, images/s at
the most clients, and that throughput as a ratio to the best peer's (ours is not a peer of itself).

With several rounds (`--rounds`), a row shows its median round at the most clients, and its ratio is the median
of the ratios within each round: on a VM whose speed drifts by a fifth within minutes, only systems measured
minutes apart compare, so each round's systems are compared with each other before the rounds are combined.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from scripts.loadtest import Report

Round = dict[int, Report]  # clients -> the closed-loop run's figures


@dataclass
class Result:
    title: str
    is_peer: bool  # False for our own service
    rounds: list[Round] = field(default_factory=list)  # in the order they ran
    refused: str | None = None  # why not reported (install, start-up or answers); then no row of figures

    @property
    def measured(self) -> bool:
        return bool(self.rounds) and self.refused is None

    def median_round(self, clients: int) -> Round:
        """The round whose throughput at `clients` is the median (the lower of two middle ones)."""
        rate = statistics.median_low(r[clients].throughput_rps for r in self.rounds)
        return next(r for r in self.rounds if r[clients].throughput_rps == rate)

    def to_json(self) -> dict:
        rounds = [{str(c): report.to_json() for c, report in r.items()} for r in self.rounds]
        return {"system": self.title, "is_peer": self.is_peer, "rounds": rounds if self.measured else None,
                "refused": self.refused}


def cell(report: Report, with_p99: bool) -> str:
    latency = report.latency_ms
    figure = f"{report.throughput_rps:.1f} ({latency.get('p50', 0):.0f}"
    figure += f" / {latency.get('p99', 0):.0f} ms)" if with_p99 else " ms)"
    failed = report.requests - report.succeeded
    return figure + (f", {failed} failed" if failed else "")


def ratio_to_best_peer(result: Result, results: list[Result], clients: int) -> float | None:
    """The median over rounds of this system's throughput over the best peer's in the same round."""
    ratios = []
    for index, own in enumerate(result.rounds):
        peers = [r.rounds[index][clients].throughput_rps for r in results
                 if r.is_peer and r.measured and index < len(r.rounds)]
        if peers:
            ratios.append(own[clients].throughput_rps / max(peers))
    return statistics.median(ratios) if ratios else None


def markdown_table(results: list[Result], clients: list[int]) -> str:
    most = max(clients)
    several = max((len(r.rounds) for r in results if r.measured), default=1) > 1
    header = ["system", *(f"c={c} req/s (p50)" if c == 1 else f"c={c} req/s (p50 / p99)" for c in clients),
              f"c={most} images/s", "vs best peer", *([f"c={most} req/s, each round"] if several else [])]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for result in results:
        if not result.measured:
            reason = (result.refused or "").splitlines()[0].replace("|", "/")  # the whole message is printed above
            lines.append(f"| {result.title} | not reported: {reason} |" + " |" * (len(header) - 2))
            continue
        shown = result.median_round(most)
        ratio = ratio_to_best_peer(result, results, most)
        cells = [cell(shown[c], with_p99=c != 1) for c in clients]
        each = [", ".join(f"{r[most].throughput_rps:.1f}" for r in result.rounds)] if several else []
        row = [result.title, *cells, f"{shown[most].images_per_s:.1f}",
               f"{ratio:.2f}" if ratio is not None else "no peer measured", *each]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
