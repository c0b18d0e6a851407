"""Markdown for one benchmark run: summary, ratios, details, ceiling, unavailable targets."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

PROTOCOL_NAMES = {"grpc": "gRPC", "http": "HTTP binary", "json": "HTTP JSON"}

# (numerator, denominator) targets whose rows/s ratio is reported when both ran.
RATIO_PAIRS = (
    ("servegraph", "triton"),
    ("servegraph", "mlserver"),
    ("servegraph", "fastapi"),
    ("servegraph", "servegraph-nobatch"),
    ("servegraph", "servegraph-aiohttp"),
    ("servegraph-onnx", "servegraph"),
    ("servegraph-onnx", "triton"),
    ("servegraph-triton-repo", "triton"),
    ("triton", "triton-nobatch"),
)


@dataclass
class Measured:
    """One cell: target x protocol x concurrency."""

    target: str
    protocol: str
    concurrency: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    client_cpu: float
    server_cpu: float
    loop_cpu: float = 0.0
    """The server's main thread (event loop) alone, as a share of one core."""
    first_error: str = ""


@dataclass
class RunResult:
    """Everything one run produced."""

    settings: str
    ceiling: dict[str, dict[int, float]] = field(default_factory=dict)  # interpreter -> batch -> rows/s
    cells: list[Measured] = field(default_factory=list)
    checks: dict[tuple[str, str], str] = field(default_factory=dict)  # (target, protocol) -> ok text
    problems: dict[str, str] = field(default_factory=dict)  # "target" or "target/protocol" -> why
    skipped: dict[str, str] = field(default_factory=dict)  # "target/protocol" -> not supported, why
    descriptions: dict[str, str] = field(default_factory=dict)


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def _cell_map(result: RunResult) -> dict[tuple[str, str, int], Measured]:
    return {(c.target, c.protocol, c.concurrency): c for c in result.cells}


def summary_table(result: RunResult, concurrencies: list[int]) -> list[str]:
    """rows/s · p99 ms per target and protocol, one column per concurrency."""
    cells = _cell_map(result)
    lines = [
        "| target | protocol | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
        "|---|---|" + "---:|" * len(concurrencies),
    ]
    seen = list(dict.fromkeys((c.target, c.protocol) for c in result.cells))
    for target, protocol in seen:
        row = []
        for c in concurrencies:
            m = cells.get((target, protocol, c))
            row.append(f"{_fmt(m.rows_per_s)} · {_ms(m.p99_ms)}" if m else "")
        lines.append(f"| {target} | {PROTOCOL_NAMES[protocol]} | " + " | ".join(row) + " |")
    return lines


def ratio_table(result: RunResult, concurrencies: list[int]) -> list[str]:
    """rows/s ratios between targets, per protocol and concurrency, from this run."""
    cells = _cell_map(result)
    rows: list[str] = []
    protocols = list(dict.fromkeys(c.protocol for c in result.cells))
    for num, den in RATIO_PAIRS:
        for protocol in protocols:
            values = []
            for c in concurrencies:
                a, b = cells.get((num, protocol, c)), cells.get((den, protocol, c))
                values.append(f"{a.rows_per_s / b.rows_per_s:.2f}" if a and b and b.rows_per_s > 0 else "")
            if any(values):
                rows.append(f"| {num} / {den} | {PROTOCOL_NAMES[protocol]} | " + " | ".join(values) + " |")
    if not rows:
        return []
    return [
        "| ratio (rows/s) | protocol | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
        "|---|---|" + "---:|" * len(concurrencies),
        *rows,
    ]


def detail_table(result: RunResult) -> list[str]:
    """Every cell with p50, p99, errors and the CPU shares of client and server."""
    lines = [
        "| target | protocol | c | rows/s | p50 ms | p99 ms | requests | errors | client CPU | server CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in result.cells:
        flag = " ⚠" if m.client_cpu >= 0.9 else ""
        lines.append(
            f"| {m.target} | {PROTOCOL_NAMES[m.protocol]} | {m.concurrency} | {_fmt(m.rows_per_s)} | "
            f"{_ms(m.p50_ms)} | {_ms(m.p99_ms)} | {m.requests} | {m.errors} | "
            f"{m.client_cpu:.0%}{flag} | {m.server_cpu:.0%} |"
        )
    return lines


def render(result: RunResult, concurrencies: list[int]) -> str:
    """The whole report as markdown."""
    out = ["# servegraph benchmark", "", result.settings, ""]
    if result.cells:
        out += ["## rows/s · p99 ms", "", *summary_table(result, concurrencies), ""]
        ratios = ratio_table(result, concurrencies)
        if ratios:
            out += ["## Ratios (same run)", "", *ratios, ""]
        out += [
            "## Details",
            "",
            (
                "CPU shares are of one core over the measuring window; the server's includes its"
                " child processes. ⚠ marks a saturated client (≥ 90 %): that cell measures the client."
            ),
            "",
            *detail_table(result),
            "",
        ]
    if result.ceiling:
        batches = sorted({b for rates in result.ceiling.values() for b in rates})
        out += [
            "## Model alone in-process (the ceiling)",
            "",
            "rows/s by batch size; one process pinned to the server core, one BLAS thread.",
            "",
            "| interpreter | " + " | ".join(f"b={b}" for b in batches) + " |",
            "|---|" + "---:|" * len(batches),
        ]
        for label, rates in result.ceiling.items():
            out.append(f"| {label} | " + " | ".join(_fmt(rates.get(b, math.nan)) for b in batches) + " |")
        out.append("")
    if result.descriptions:
        out += ["## Targets", ""]
        for name, text in result.descriptions.items():
            checks = [f"{PROTOCOL_NAMES[p]}: {v}" for (t, p), v in result.checks.items() if t == name]
            suffix = f" — output check: {'; '.join(checks)}" if checks else ""
            out.append(f"- **{name}**: {text}{suffix}")
        out.append("")
    if result.problems:
        out += ["## Unavailable or failed", ""]
        out += [f"- **{key}**: unavailable: {_one_line(why)}" for key, why in result.problems.items()]
        out.append("")
    if result.skipped:
        out += ["## Not supported by the target", ""]
        out += [f"- **{key}**: {why}" for key, why in result.skipped.items()]
        out.append("")
    return "\n".join(out)


def medians(rounds: list[RunResult], settings: str) -> RunResult:
    """One result whose every cell is the median of its rounds (problems of any round kept)."""
    result = RunResult(settings=settings)
    cells: dict[tuple[str, str, int], list[Measured]] = defaultdict(list)
    for one in rounds:
        result.problems.update(one.problems)
        result.checks.update(one.checks)
        result.descriptions.update(one.descriptions)
        for cell in one.cells:
            cells[(cell.target, cell.protocol, cell.concurrency)].append(cell)
    for (name, protocol, concurrency), measured in cells.items():
        numbers = {
            f.name: statistics.median(getattr(m, f.name) for m in measured)
            for f in dataclasses.fields(Measured)
            if f.type in ("float", "int") and f.name != "concurrency"
        }
        result.cells.append(
            Measured(target=name, protocol=protocol, concurrency=concurrency, first_error=measured[0].first_error, **numbers)
        )
    return result
