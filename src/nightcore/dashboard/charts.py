"""Inline SVG charts, built server-side (no script, no network, no web fonts).

Every piece of text that reaches the SVG goes through :func:`markupsafe.escape` (tenant names
and codes come from the audit log: untrusted); numbers are formatted here. Colours come from
CSS classes (``c-ok``, ``c-bad``, ``s0``..``s7``), never from inline ``style`` attributes, so
the report's CSP can pin its one stylesheet by hash.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Sequence

from markupsafe import Markup, escape

from nightcore.dashboard import text
from nightcore.dashboard.views import RunView, code_class

SERIES_CLASSES = 8


def _f(x: float) -> str:
    return f"{x:.1f}"


def nice_ticks(vmax: float, n: int = 4) -> list[float]:
    if not vmax or vmax <= 0 or not math.isfinite(vmax):
        vmax = 1.0
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = mag
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = m * mag
        if step >= raw:
            break
    return [i * step for i in range(math.ceil(vmax / step - 1e-9) + 1)]


LOG_RATIO = 100.0  # a log scale once the largest value is more than 100x the smallest


def choose_scale(values: Sequence[float]) -> str:
    """``"log"`` when the positive values span more than two orders of magnitude (a linear
    axis would flatten all but the largest to zero), else ``"linear"``."""
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    if len(pos) < 2:
        return "linear"
    return "log" if max(pos) / min(pos) > LOG_RATIO else "linear"


def log_ticks(vmin: float, vmax: float, most: int = 7) -> list[float]:
    """Powers of ten from the one at or below ``vmin`` to the one at or above ``vmax`` (every
    second or third one when there would be more than ``most``)."""
    lo = math.floor(math.log10(vmin))
    hi = max(math.ceil(math.log10(vmax)), lo + 1)
    step = 1
    while (hi - lo) // step + 1 > most:
        step += 1
    hi = lo + math.ceil((hi - lo) / step) * step
    return [10.0**e for e in range(lo, hi + 1, step)]


def _time_label(t: dt.datetime, span: float) -> str:
    t = t.astimezone(dt.UTC)
    if span < 300:
        return t.strftime("%H:%M:%S")
    if span < 86400:
        return t.strftime("%H:%M")
    return t.strftime("%m-%d %H:%M")


def _time_range(times: Sequence[dt.datetime]) -> tuple[dt.datetime, float]:
    """Start and length (s) of the time axis: at least a minute, centred on short bursts."""
    lo, hi = min(times), max(times)
    span = (hi - lo).total_seconds()
    if span < 60:
        lo -= dt.timedelta(seconds=(60 - span) / 2)
        span = 60.0
    else:  # a little room so that the first and last points are not cut in half
        lo -= dt.timedelta(seconds=span * 0.02)
        span *= 1.04
    return lo, span


def _svg(parts: list[str]) -> Markup:
    """Mark built SVG as safe: every untrusted text in ``parts`` went through ``escape``."""
    return Markup("".join(parts))  # noqa: S704 - escaped piece by piece above


def empty(message: str, width: int = 380, height: int = 80) -> Markup:
    return _svg(
        [
            f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(message)}"><text class="axis" x="{width / 2}" '
            f'y="{height / 2}" text-anchor="middle">{escape(message)}</text></svg>'
        ]
    )


def bar_chart(counts: Sequence[tuple[str, int]], *, width: int = 380) -> Markup:
    """Horizontal bars: outcome code -> count."""
    if not counts:
        return empty("no runs yet", width)
    rows = list(counts)[:12]
    row_h, label_w, count_w = 26, 140, 64
    height = row_h * len(rows) + 8
    top = max(n for _, n in rows) or 1
    bar_w = width - label_w - count_w
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="run outcomes by code">'
    ]
    for i, (code, n) in enumerate(rows):
        y = 4 + i * row_h
        w = max(2.0, bar_w * n / top)
        cls = code_class(code)
        out.append(
            f'<g class="bar"><title>{escape(code)}: {n:,}</title>'
            f'<text class="label" x="{label_w - 8}" y="{y + 17}" text-anchor="end">'
            f"{escape(text.clean(code, 17))}</text>"
            f'<rect class="c-{cls}" x="{label_w}" y="{y + 4}" width="{_f(w)}" height="16" rx="3"/>'
            f'<text class="value" x="{_f(label_w + w + 6)}" y="{y + 17}">{n:,}</text></g>'
        )
    out.append("</svg>")
    return _svg(out)


def line_chart(
    series: dict[str, list[tuple[dt.datetime, float, str]]],
    *,
    label: str,
    fmt: str = "num",
    width: int = 380,
    height: int = 220,
) -> Markup:
    """One line per tenant: value over time (the legend is HTML, beside the chart)."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return empty("no runs to chart yet", width)
    left, right, top_m, bottom = 50, 10, 14, 26
    pw, ph = width - left - right, height - top_m - bottom
    lo, span = _time_range([p[0] for p in points])
    values = [p[1] for p in points]
    scale = choose_scale(values)
    if scale == "log":
        ticks = log_ticks(min(v for v in values if v > 0), max(values))
        lmin, lmax = math.log10(ticks[0]), math.log10(ticks[-1])

        def y(v: float) -> float:
            lv = math.log10(v) if v > 0 else lmin
            return top_m + ph - ph * (max(lmin, lv) - lmin) / (lmax - lmin)

    else:
        ticks = nice_ticks(max(values))
        ymax = ticks[-1] or 1.0

        def y(v: float) -> float:
            return top_m + ph - ph * (v / ymax)

    def x(t: dt.datetime) -> float:
        return left + pw * ((t - lo).total_seconds() / span)

    fmt_value = text.millis if fmt == "ms" else text.num
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}{" (log scale)" if scale == "log" else ""}" '
        f'data-scale="{scale}">'
    ]
    if scale == "log":
        out.append(f'<text class="axis note" x="{left + 4}" y="{top_m - 2}">log scale</text>')
    for tv in ticks:
        yy = _f(y(tv))
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{yy}" y2="{yy}"/>'
            f'<text class="axis" x="{left - 6}" y="{_f(y(tv) + 4)}" text-anchor="end">'
            f"{escape(text.compact_num(tv))}</text>"
        )
    for i in range(4):
        t = lo + dt.timedelta(seconds=span * i / 3)
        anchor = "start" if i == 0 else "end" if i == 3 else "middle"
        out.append(
            f'<text class="axis" x="{_f(x(t))}" y="{height - 8}" text-anchor="{anchor}">'
            f"{escape(_time_label(t, span))}</text>"
        )
    for idx, (name, pts) in enumerate(series.items()):
        cls = f"s{idx % SERIES_CLASSES}"
        if not pts:
            continue
        coords = " ".join(f"{_f(x(t))},{_f(y(v))}" for t, v, _ in pts)
        out.append(f'<g class="series {cls}"><title>{escape(name)}</title>')
        if len(pts) > 1:
            out.append(f'<polyline points="{coords}"/>')
        for t, v, code in pts:
            tip = f"{name} · {text.stamp(t)} · {fmt_value(v)} · {code}"
            bad = " fail" if code_class(code) == "bad" else ""
            out.append(
                f'<circle class="pt{bad}" cx="{_f(x(t))}" cy="{_f(y(v))}" r="3.5">'
                f"<title>{escape(text.clean(tip, 160))}</title></circle>"
            )
        out.append("</g>")
    out.append("</svg>")
    return _svg(out)


CLUSTER_PX = 9.0  # runs of one lane closer than this share one dot, labelled with a count


def clusters(xs: Sequence[float], gap: float = CLUSTER_PX) -> list[list[int]]:
    """Indexes of ``xs`` (positions on one lane) grouped left to right: a point joins the
    group before it when it lies within ``gap`` of that group's first point."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and xs[i] - xs[groups[-1][0]] < gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def timeline(runs: Sequence[RunView], *, width: int = 720) -> Markup:
    """Recent runs on a time axis, one lane per outcome code."""
    pts = [(t, r) for r in runs if (t := text.parse_ts(r.ts)) is not None]
    if not pts:
        return empty("no runs yet", width)
    by_code = Counter(r.code for _, r in pts)
    lanes = sorted(by_code, key=lambda c: (c != "OK", -by_code[c], c))[:10]
    lane_of = {c: i for i, c in enumerate(lanes)}
    left, right, top_m, lane_h = 150, 16, 8, 26
    height = top_m + lane_h * len(lanes) + 28
    pw = width - left - right
    lo, span = _time_range([t for t, _ in pts])

    def x(t: dt.datetime) -> float:
        return left + pw * ((t - lo).total_seconds() / span)

    out = [
        f'<svg class="chart wide" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="timeline of recent runs">'
    ]
    for code, i in lane_of.items():
        yy = top_m + lane_h * i + lane_h / 2
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_f(yy)}" y2="{_f(yy)}"/>'
            f'<text class="label" x="{left - 10}" y="{_f(yy + 4)}" text-anchor="end">'
            f"{escape(text.clean(code, 17))}</text>"
        )
    for i in range(5):
        t = lo + dt.timedelta(seconds=span * i / 4)
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(
            f'<text class="axis" x="{_f(x(t))}" y="{height - 8}" text-anchor="{anchor}">'
            f"{escape(_time_label(t, span))}</text>"
        )
    by_lane: dict[int, list[tuple[dt.datetime, RunView]]] = {}
    for t, r in pts:
        lane = lane_of.get(r.code)
        if lane is not None:
            by_lane.setdefault(lane, []).append((t, r))
    for lane, lane_pts in sorted(by_lane.items()):
        yy = top_m + lane_h * lane + lane_h / 2
        for group in clusters([x(t) for t, _ in lane_pts]):
            members = [lane_pts[i] for i in group]
            t0, r0 = members[0]
            cls = code_class(r0.code)
            if len(members) == 1:
                tip = f"{r0.tenant} · {r0.code} · {text.stamp(t0)}"
                if r0.wall_ms is not None:
                    tip += f" · {text.millis(r0.wall_ms)}"
                out.append(
                    f'<circle class="dot c-{cls}" cx="{_f(x(t0))}" cy="{_f(yy)}" r="5">'
                    f"<title>{escape(text.clean(tip, 160))}</title></circle>"
                )
                continue
            cx = sum(x(t) for t, _ in members) / len(members)
            first, last = min(t for t, _ in members), max(t for t, _ in members)
            tenants = sorted({r.tenant for _, r in members})
            tip = (
                f"{len(members)} runs · {r0.code} · {text.stamp(first)} – {text.stamp(last)}"
                f" · {', '.join(tenants[:5])}{' …' if len(tenants) > 5 else ''}"
            )
            n = len(members)
            label = str(n) if n < 1000 else "1k+"
            out.append(
                f'<g class="cluster"><title>{escape(text.clean(tip, 200))}</title>'
                f'<circle class="dot cl c-{cls}" cx="{_f(cx)}" cy="{_f(yy)}" r="10"/>'
                f'<text class="count" x="{_f(cx)}" y="{_f(yy + 4.5)}" '
                f'text-anchor="middle">{label}</text></g>'
            )
    out.append("</svg>")
    return _svg(out)


def usage_bar(frac: float | None, cls: str) -> Markup:
    """A small bar: how much of its limit a run used."""
    if frac is None:
        return Markup("")
    w = max(0.0, min(100.0, frac * 100))
    return _svg(
        [
            '<svg class="usage" viewBox="0 0 100 6" preserveAspectRatio="none" '
            'aria-hidden="true"><rect class="track" width="100" height="6" rx="3"/>'
            f'<rect class="c-{escape(cls)}" width="{_f(max(w, 1.5))}" height="6" rx="3"/></svg>'
        ]
    )
