"""The side-by-side table of issue 28: per system, each client count's requests/s with its latency, images/s at
the most clients, and that throughput as a ratio to the best peer's (ours is not a peer of itself)."""

from __future__ import annotations

from dataclasses import dataclass

from scripts.loadtest import Report


@dataclass
class Result:
    title: str
    is_peer: bool  # False for our own service
    reports: dict[int, Report] | None = None  # clients -> the closed-loop run's figures; None: not reported
    refused: str | None = None  # why not reported (install, start-up or answers)

    def to_json(self) -> dict:
        reports = {str(c): report.to_json() for c, report in self.reports.items()} if self.reports else None
        return {"system": self.title, "is_peer": self.is_peer, "closed_loop": reports, "refused": self.refused}


def cell(report: Report, with_p99: bool) -> str:
    latency = report.latency_ms
    figure = f"{report.throughput_rps:.1f} ({latency.get('p50', 0):.0f}"
    figure += f" / {latency.get('p99', 0):.0f} ms)" if with_p99 else " ms)"
    failed = report.requests - report.succeeded
    return figure + (f", {failed} failed" if failed else "")


def best_peer_rate(results: list[Result], clients: int) -> float | None:
    rates = [r.reports[clients].throughput_rps for r in results if r.is_peer and r.reports]
    return max(rates) if rates else None


def markdown_table(results: list[Result], clients: list[int]) -> str:
    most = max(clients)
    header = ["system", *(f"c={c} req/s (p50)" if c == 1 else f"c={c} req/s (p50 / p99)" for c in clients),
              f"c={most} images/s", "vs best peer"]
    best = best_peer_rate(results, most)
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for result in results:
        if not result.reports:
            reason = (result.refused or "").splitlines()[0].replace("|", "/")  # the whole message is printed above
            lines.append(f"| {result.title} | not reported: {reason} |" + " |" * (len(header) - 2))
            continue
        top = result.reports[most]
        ratio = f"{top.throughput_rps / best:.2f}" if best else "no peer measured"
        cells = [cell(result.reports[c], with_p99=c != 1) for c in clients]
        lines.append("| " + " | ".join([result.title, *cells, f"{top.images_per_s:.1f}", ratio]) + " |")
    return "\n".join(lines)
