"""The benchmark's output: the targets of issue 13 judged against the figures, and
``results.md`` (table), ``results.json`` (everything) and ``results.png`` (chart)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import RowResult

RSS_LIMIT_MB = 80


@dataclass(frozen=True)
class Target:
    goal: str
    figure: str
    met: bool | None  # None: a row it needs was not measured


def summary_line(row: RowResult) -> str:
    parts = [f"{row.value:,.1f} {row.unit}"]
    if row.p50_ms is not None and row.unit != "checks/s":
        parts.append(f"p50 {row.p50_ms:.1f} ms")
    if row.p99_ms is not None:
        parts.append(f"p99 {row.p99_ms:.1f} ms")
    if row.unit == "req/s":
        parts.append(f"errors {row.errors} (non-2xx {row.non_2xx})")
    if row.notes:
        parts.append(row.notes)
    return ", ".join(parts)


def targets(rows: dict[str, RowResult]) -> list[Target]:  # noqa: PLR0912, PLR0915 - one flat list, in the issue's order
    """Every target of the issue that the measured rows allow to judge."""
    out: list[Target] = []

    def get(name: str) -> RowResult | None:
        return rows.get(name)

    def ratio(goal: str, name: str, base_name: str, least: float) -> None:
        row, base = get(name), get(base_name)
        if row is None or base is None or not base.value:
            out.append(Target(goal, "not measured", None))
            return
        r = row.value / base.value
        out.append(
            Target(goal, f"{number(row.value)} / {number(base.value)} = {r:.2f}x", r >= least)
        )

    def at_least(goal: str, name: str, least: float) -> None:
        row = get(name)
        if row is None:
            out.append(Target(goal, "not measured", None))
            return
        out.append(Target(goal, f"{number(row.value)} {row.unit}", row.value >= least))

    def p99_at_most(goal: str, name: str, most_ms: float) -> None:
        row = get(name)
        if row is None or row.p99_ms is None:
            out.append(Target(goal, "not measured", None))
        elif not row.value:  # no request completed: no latency to speak of
            out.append(Target(goal, "no request completed", False))
        else:
            out.append(Target(goal, f"p99 {row.p99_ms:.1f} ms", row.p99_ms <= most_ms))

    ratio("password grant c=8 >= 0.95x bcrypt ceiling", "password-c8", "ceiling-bcrypt", 0.95)
    c1, bcrypt = get("password-c1"), get("ceiling-bcrypt")
    if c1 and bcrypt and c1.p50_ms is not None:
        limit = bcrypt.extra["check_ms"] + 5
        out.append(
            Target(
                "password grant c=1 p50 <= one bcrypt check + 5 ms",
                f"p50 {c1.p50_ms:.0f} ms vs {limit:.0f} ms",
                c1.p50_ms <= limit,
            )
        )
    else:
        out.append(
            Target("password grant c=1 p50 <= one bcrypt check + 5 ms", "not measured", None)
        )
    at_least("refresh HS256 SQLite 1w >= 1,000 req/s", "refresh-hs256-sqlite-1w", 1000)
    p99_at_most("refresh HS256 SQLite 1w p99 <= 50 ms", "refresh-hs256-sqlite-1w", 50)
    at_least("refresh HS256 SQLite 2w >= 1,900 req/s", "refresh-hs256-sqlite-2w", 1900)
    for db in ("sqlite", "postgres"):
        ratio(
            f"refresh RS256 >= 0.6x HS256 ({db})",
            f"refresh-rs256-{db}-1w",
            f"refresh-hs256-{db}-1w",
            0.6,
        )
    for alg in ("hs256", "rs256", "es256", "eddsa"):
        name = f"refresh-{alg}-postgres-1w"
        if get(name):
            ratio(f"refresh {alg} PostgreSQL >= 0.7x SQLite", name, f"refresh-{alg}-sqlite-1w", 0.7)
    chains = {n: r for n, r in rows.items() if n.startswith(("refresh-", "storm-refresh"))}
    if chains:
        faults = []
        for name, row in chains.items():
            failed = row.extra.get("failures", 0)
            idle = row.extra.get("chains_without_rotation", 0)
            if row.errors or failed or idle:
                faults.append(
                    f"{name}: errors {row.errors} (non-2xx {row.non_2xx}), refused "
                    f"{failed:.0f}, chains that never rotated {idle:.0f}"
                )
        figure = "; ".join(faults) or f"all {len(chains)} rows: no error, every chain rotated"
        out.append(Target("refresh: zero errors, every chain rotating", figure, not faults))
    else:
        out.append(Target("refresh: zero errors, every chain rotating", "not measured", None))
    ratio("JWKS 1w >= 0.65x bare ASGI GET", "jwks-1w", "ceiling-asgi-get-1w", 0.65)
    at_least("JWKS 2w >= 35,000 req/s", "jwks-2w", 35000)
    p99_at_most("storm: refresh p99 <= 50 ms", "storm-refresh-1w", 50)
    ratio("storm: refresh >= 0.5x storm-free", "storm-refresh-1w", "refresh-hs256-sqlite-1w", 0.5)
    p99_at_most("storm: JWKS p99 <= 10 ms", "storm-jwks-1w", 10)
    storm = get("storm-refresh-1w") or get("storm-jwks-1w")
    if storm and bcrypt:
        logins = storm.extra["storm_logins_per_s"]
        r = logins / bcrypt.value
        out.append(
            Target(
                "storm: logins >= 0.85x bcrypt ceiling",
                f"{logins:.1f} / {bcrypt.value:.1f} = {r:.2f}x",
                r >= 0.85,
            )
        )
    else:
        out.append(Target("storm: logins >= 0.85x bcrypt ceiling", "not measured", None))
    for alg in ("hs256", "rs256", "es256", "eddsa"):
        verify = get(f"verify-{alg}")
        goal = f"verify_token {alg} >= 0.8x joserfc and >= PyJWT"
        if verify is None:
            out.append(Target(goal, "not measured", None))
            continue
        jose, pyjwt = verify.extra["joserfc_per_s"], verify.extra["pyjwt_per_s"]
        out.append(
            Target(
                goal,
                f"{verify.value / jose:.2f}x joserfc, {verify.value / pyjwt:.2f}x PyJWT",
                verify.value >= 0.8 * jose and verify.value >= pyjwt,
            )
        )
    served = [r for r in rows.values() if r.rss_mb and r.group in ("http", "storm")]
    if served:
        peak = max(max(r.rss_mb) for r in served)
        out.append(
            Target(
                f"peak RSS <= {RSS_LIMIT_MB} MB per process", f"{peak:.0f} MB", peak <= RSS_LIMIT_MB
            )
        )
    ready, users = get("serve-ready"), get("users-list")
    out.append(
        Target("issuer serve ready <= 1 s", f"{ready.value:.2f} s", ready.value <= 1)
        if ready
        else Target("issuer serve ready <= 1 s", "not measured", None)
    )
    out.append(
        Target("issuer users list <= 0.3 s", f"{users.value:.2f} s", users.value <= 0.3)
        if users
        else Target("issuer users list <= 0.3 s", "not measured", None)
    )
    return out


def number(value: float) -> str:
    """Thousands separated; small figures (logins/s) keep a decimal."""
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: dict[str, RowResult], judged: list[Target], info: dict[str, Any]) -> str:
    knobs = info["knobs"]
    lines = [
        "# issuer benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['wrk']}. Load average at start "
        f"{info['load_average'][0]:.2f}, at end {info['load_average_end'][0]:.2f}. "
        f"{knobs['runs']} run(s) x {knobs['duration_s']:g} s per row (medians); "
        f"PostgreSQL: {info['postgres']}; {info['seconds_total']:.0f} s in all.",
        "",
        "| row | throughput | p50 ms | p99 ms | errors (non-2xx) | server CPU (cores) "
        "| server CPU µs/request | peak RSS MB per process | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows.values():
        notes = [row.notes] if row.notes else []
        if "storm_logins_per_s" in row.extra:
            notes.append(f"logins meanwhile {row.extra['storm_logins_per_s']:.1f}/s")
        if "rotations" in row.extra:
            notes.append(
                f"{row.extra['rotations']:,.0f} rotations (median run), "
                f"refused {row.extra.get('failures', 0):.0f}"
            )
        if "unexpected" in row.extra:
            notes.append(f"responses other than 304: {row.extra['unexpected']:.0f}")
        errors = f"{row.errors} ({row.non_2xx})" if row.unit == "req/s" else ""
        p50 = row.p50_ms if row.unit == "req/s" else None
        value = f"{row.value:,.3f} s" if row.unit == "s" else f"{row.value:,.1f} {row.unit}"
        lines.append(
            f"| {row.title} | {value} | {_cell(p50, '.1f')} | {_cell(row.p99_ms, '.1f')} | "
            f"{errors} | {_cell(row.cpu_cores, '.2f')} | {_cell(row.cpu_us_per_request, ',.0f')} | "
            f"{' / '.join(f'{m:.0f}' for m in row.rss_mb)} | {'; '.join(notes)} |"
        )
    lines += ["", "## Targets (issue 13)", "", "| target | measured | |", "| --- | --- | --- |"]
    for target in judged:
        verdict = {True: "met", False: "**missed**", None: "n/a"}[target.met]
        lines.append(f"| {target.goal} | {target.figure} | {verdict} |")
    lines.append("")
    return "\n".join(lines)


def chart(rows: dict[str, RowResult], path: Path) -> None:
    """Throughput per row (log scale), ceilings in their own colour, p99 beside each bar."""
    import matplotlib  # noqa: PLC0415 - the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = [r for r in rows.values() if r.unit != "s" and r.value > 0]
    colours = {"ceiling": "#999999", "in-process": "#6a8caf", "http": "#2b6cb0", "storm": "#c05621"}
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(shown) + 1.5))
    y = list(range(len(shown)))[::-1]
    ax.barh(y, [r.value for r in shown], color=[colours.get(r.group, "#2b6cb0") for r in shown])
    ax.set_yticks(y, [r.name for r in shown], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("per second (log scale): requests, checks or verifications")
    for yi, row in zip(y, shown, strict=True):
        label = f" {number(row.value)}"
        if row.p99_ms is not None and row.unit == "req/s":
            label += f"  p99 {row.p99_ms:.0f} ms"
        ax.text(row.value, yi, label, va="center", fontsize=7)
    ax.set_title("issuer under load (grey: ceilings, orange: during a login storm)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, rows: dict[str, RowResult], info: dict[str, Any]) -> None:
    judged = targets(rows)
    (out / "results.md").write_text(markdown(rows, judged, info))
    data = {
        "machine": info,
        "rows": [asdict(r) for r in rows.values()],
        "targets": [asdict(t) for t in judged],
    }
    (out / "results.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    chart(rows, out / "results.png")
