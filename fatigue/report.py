"""The backtest as one self-contained HTML page: inline CSS, inline SVG charts drawn here, no external resources.

The page works offline and is deterministic (no generation time, no random ids): the same backtest gives the
same bytes. A few lines of inline JavaScript only check, after layout, that every chart has drawn marks, and
record it on ``<html data-charts-rendered=N data-charts-total=M>`` for the headless-browser test.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Final, TypeVar

from fatigue.backtest import Backtest, PolicyBacktest, World
from fatigue.events import CHANNELS

CHANNEL_COLORS: Final = {"email": "#4e79a7", "sms": "#f28e2b", "call": "#59a14f"}
BEFORE_COLOR: Final = "#a3acb9"
AFTER_COLOR: Final = "#2f6db5"
KIND_COLORS: Final = {"blocked": "#e15759", "quiet_hours": "#b07aa1"}
REASON_COLORS: Final = {
    "cap": "#4e79a7",
    "global_cap": "#76b7b2",
    "customer_cap": "#bab0ac",
    "short_hangups": "#e15759",
    "conversation": "#b07aa1",
    "unread": "#edc948",
    "complaint": "#ff9da7",
    "unsubscribe": "#9c755f",
    "sms_stop": "#c49c94",
    "opt_out": "#6b4f3a",
    "quiet_hours": "#59a14f",
}
OTHER_COLOR: Final = "#8c8c8c"
HISTOGRAM_BUCKETS: Final = 12  # contacts per customer-week: 0..11 and "12+"
TOP_ROWS: Final = 12
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_K = TypeVar("_K")
_FONT: Final = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif"


def render_html(backtest: Backtest, *, title: str | None = None, note: str | None = None) -> str:
    """The whole report page."""
    policies = backtest.policies
    first = policies[0].before if policies else World()
    heading = title or "Policy backtest"
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(heading)} — {escape(backtest.history)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{escape(heading)}</h1>",
        f'<p class="sub">History <code>{escape(backtest.history)}</code> · {_n(first.events)} events · '
        f"{_period(first)} · {_n(first.customers)} customers with counted contacts · "
        f"{_n(first.counted)} counted contacts</p>",
    ]
    if note:
        parts.append(f'<p class="note">{escape(note)}</p>')
    parts.append("</header>")
    parts.append(_summary(policies))
    for result in policies:
        parts.append(_policy_section(result))
    parts.append(_method())
    parts.append(
        "<footer>Made by <code>fatigue backtest</code> with the fatigue-guard engine; figures are also available as "
        "JSON (<code>--json</code>).</footer>"
    )
    parts.append(f"<script>{_CHECK_JS}</script>")
    parts.append("</body>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- sections


def _summary(policies: Sequence[PolicyBacktest]) -> str:
    out = ['<section id="summary">', "<h2>At a glance</h2>"]
    for result in policies:
        out.append(_cards(result))
    out.append(_comparison_table(policies))
    if len(policies) > 1:
        reasons = _reasons_in(policies)
        rows = [
            (result.label, [(reason, _suppressed_for_reason(result, reason)) for reason in reasons])
            for result in policies
        ]
        colors = {reason: REASON_COLORS.get(reason, OTHER_COLOR) for reason in reasons}
        out.append('<div class="grid">')
        out.append(
            _figure(
                "Contacts each policy would have blocked, by reason",
                _hbar_stacked(rows, colors, "policy comparison"),
                _legend(colors),
            )
        )
        out.append(
            _figure(
                "Contacts per customer per week under each policy",
                _vbar_grouped(
                    _buckets(policies[0].before.per_week.histogram, policies),
                    [("history", BEFORE_COLOR, _bucket_values(policies[0].before.per_week.histogram, policies))]
                    + [
                        (result.label, _policy_color(index), _bucket_values(result.after.per_week.histogram, policies))
                        for index, result in enumerate(policies)
                    ],
                    "customer-weeks",
                ),
                _legend(
                    {"history (before)": BEFORE_COLOR}
                    | {f"{result.label} (after)": _policy_color(index) for index, result in enumerate(policies)}
                ),
            )
        )
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def _cards(result: PolicyBacktest) -> str:
    before, after = result.before, result.after
    cards = [
        ("would have been blocked", _n(result.suppressed), f"{_pct(result.suppressed_rate)} of counted contacts"),
        (
            "customers protected",
            _n(result.customers_protected),
            f"{_pct(result.protected_rate)} of {_n(before.customers)} customers",
        ),
        ("contacts still going out", _n(after.counted), f"of {_n(before.counted)} counted contacts"),
        (
            "contacts per customer-week, p90",
            f"{_opt(before.per_week.p90)} → {_opt(after.per_week.p90)}",
            f"mean {_dec(before.per_week.mean)} → {_dec(after.per_week.mean)}, "
            f"max {_opt(before.per_week.max)} → {_opt(after.per_week.max)}",
        ),
    ]
    # a rate over no calls (or no emails) says nothing: leave its card out
    if before.outcomes.calls_with_outcome:
        cards.append(
            (
                "short hang-up rate",
                f"{_pct(before.outcomes.short_hangup_rate)} → {_pct(after.outcomes.short_hangup_rate)}",
                f"of calls with a reported outcome ({_n(after.outcomes.calls_with_outcome)} after)",
            )
        )
    if before.outcomes.emails_settled:
        cards.append(
            (
                "unread rate",
                f"{_pct(before.outcomes.unread_rate)} → {_pct(after.outcomes.unread_rate)}",
                f"of marketing emails past their deadline ({_n(after.outcomes.emails_settled)} after)",
            )
        )
    cards.append(("sender violations", _n(result.violations_total), "if senders had ignored the guard"))
    body = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
        f'<div class="detail">{escape(detail)}</div></div>'
        for label, value, detail in cards
    )
    return (
        f'<div class="cards-title"><a href="#policy-{_slug(result.label)}">{escape(result.label)}</a> '
        f'<span class="version">{escape(result.version)}</span></div><div class="cards">{body}</div>'
    )


def _comparison_table(policies: Sequence[PolicyBacktest]) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("policy version", [result.version for result in policies]),
        ("counted categories", [", ".join(result.counted_categories) for result in policies]),
        ("counted contacts in the history", [_n(result.before.counted) for result in policies]),
        ("would have been blocked", [f"{_n(r.suppressed)} ({_pct(r.suppressed_rate)})" for r in policies]),
        ("… their outcomes dropped", [_n(result.outcomes_dropped) for result in policies]),
        ("contacts still going out", [_n(result.after.counted) for result in policies]),
        (
            "customers protected",
            [f"{_n(r.customers_protected)} ({_pct(r.protected_rate)})" for r in policies],
        ),
        (
            "contacts per customer-week: mean",
            [f"{_dec(r.before.per_week.mean)} → {_dec(r.after.per_week.mean)}" for r in policies],
        ),
        (
            "contacts per customer-week: p90 / p99 / max",
            [
                f"{_opt(r.before.per_week.p90)} / {_opt(r.before.per_week.p99)} / {_opt(r.before.per_week.max)} → "
                f"{_opt(r.after.per_week.p90)} / {_opt(r.after.per_week.p99)} / {_opt(r.after.per_week.max)}"
                for r in policies
            ],
        ),
        (
            "short hang-up rate",
            [
                f"{_pct(r.before.outcomes.short_hangup_rate)} → {_pct(r.after.outcomes.short_hangup_rate)}"
                for r in policies
            ],
        ),
        (
            "unread rate",
            [f"{_pct(r.before.outcomes.unread_rate)} → {_pct(r.after.outcomes.unread_rate)}" for r in policies],
        ),
        ("block decisions published (after)", [_n(_blocks(result.after)) for result in policies]),
        ("sender violations (senders ignoring it)", [_n(result.violations_total) for result in policies]),
    ]
    # a rate with no calls (or emails) behind it in any policy is noise: leave the row out
    if not any(result.before.outcomes.calls_with_outcome for result in policies):
        rows = [row for row in rows if row[0] != "short hang-up rate"]
    if not any(result.before.outcomes.emails_settled for result in policies):
        rows = [row for row in rows if row[0] != "unread rate"]
    head = "".join(f'<th scope="col">{escape(result.label)}</th>' for result in policies)
    body = "".join(
        f'<tr><th scope="row">{escape(label)}</th>{"".join(f"<td>{escape(v)}</td>" for v in values)}</tr>'
        for label, values in rows
    )
    caption = "Side by side" if len(policies) > 1 else "Figures"
    return (
        f'<table class="compare"><caption>{caption} (before → after)</caption>'
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _policy_section(result: PolicyBacktest) -> str:
    before, after = result.before, result.after
    out = [
        f'<section class="policy" id="policy-{_slug(result.label)}">',
        f'<h2>{escape(result.label)} <span class="version">{escape(result.version)}</span></h2>',
        f'<p class="description">{escape(result.description)}</p>',
        '<div class="grid">',
    ]
    reasons = sorted({reason for reason, _ in result.suppressed_by_reason_channel})
    reasons.sort(key=lambda reason: -_suppressed_for_reason(result, reason))
    rows = [
        (reason, [(channel, result.suppressed_by_reason_channel[(reason, channel)]) for channel in CHANNELS])
        for reason in reasons
    ]
    channels = {
        channel: color
        for channel, color in CHANNEL_COLORS.items()
        if any(result.suppressed_by_reason_channel[(reason, channel)] for reason in reasons)
    }
    out.append(
        _figure(
            "Contacts that would have been blocked, by reason and channel",
            _hbar_stacked(rows, CHANNEL_COLORS, "blocked contacts"),
            _legend(channels) if channels else "",
        )
    )
    buckets = _buckets(before.per_week.histogram, [result])
    out.append(
        _figure(
            "Contacts per customer per week (customer-weeks with a contact before or after)",
            _vbar_grouped(
                buckets,
                [
                    ("before", BEFORE_COLOR, _bucket_values(before.per_week.histogram, [result])),
                    ("after", AFTER_COLOR, _bucket_values(after.per_week.histogram, [result])),
                ],
                "customer-weeks",
            ),
            _legend({"before (history)": BEFORE_COLOR, "after (with the policy)": AFTER_COLOR}),
        )
    )
    out.append(
        _figure(
            "Counted contacts per week, all customers",
            _weekly_chart(before.weekly_volume, after.weekly_volume),
            _legend({"before (history)": BEFORE_COLOR, "after (with the policy)": AFTER_COLOR}),
        )
    )
    senders = result.violations_by_sender()[:TOP_ROWS]
    kinds = sorted({kind for _, counter in senders for kind in counter})
    out.append(
        _figure(
            "Sender violations by sender, had senders ignored the guard",
            _hbar_stacked(
                [(sender, [(kind, counter[kind]) for kind in kinds]) for sender, counter in senders],
                {kind: KIND_COLORS.get(kind, OTHER_COLOR) for kind in kinds},
                "sender violations",
            ),
            _legend({kind: KIND_COLORS.get(kind, OTHER_COLOR) for kind in kinds}),
        )
    )
    out.append("</div>")
    out.append('<div class="tables">')
    out.append(_rates_table(result))
    out.append(
        _counter_table(
            "Blocked contacts by rule",
            ("rule id", "reason"),
            [((rule_id, reason), count) for (rule_id, reason), count in _top(result.suppressed_by_rule)],
            result.suppressed,
        )
    )
    out.append(
        _counter_table(
            "Blocked contacts by sender",
            ("sender",),
            [((sender,), count) for sender, count in _top(result.suppressed_by_sender)],
            result.suppressed,
        )
    )
    out.append(
        _counter_table(
            "Blocked contacts by campaign",
            ("campaign",),
            [((campaign,), count) for campaign, count in _top(result.suppressed_by_campaign)],
            result.suppressed,
        )
    )
    violations = Counter[tuple[str, str, str]]()
    for (sender, kind, reason, _channel), count in result.violations.items():
        violations[(sender, kind, reason)] += count
    out.append(
        _counter_table(
            "Sender violations by sender, kind and reason",
            ("sender", "kind", "reason"),
            [(tuple(key), count) for key, count in _top(violations)],
            result.violations_total,
        )
    )
    out.append(
        _counter_table(
            "Decisions the guard would have published (after)",
            ("action", "reason", "channel"),
            [(tuple(key), count) for key, count in _top(after.decisions)],
            sum(after.decisions.values()),
        )
    )
    out.append("</div>")
    rejected = sum(before.rejections.values())
    if rejected:
        reasons_text = ", ".join(f"{reason} {_n(count)}" for reason, count in sorted(before.rejections.items()))
        out.append(
            f'<p class="small">Rejected input lines (not replayed): {_n(rejected)} — {escape(reasons_text)}.</p>'
        )
    out.append("</section>")
    return "\n".join(out)


def _rates_table(result: PolicyBacktest) -> str:
    before, after = result.before.outcomes, result.after.outcomes
    rows = [
        ("counted calls", _n(before.calls), _n(after.calls)),
        ("… with a reported outcome", _n(before.calls_with_outcome), _n(after.calls_with_outcome)),
        ("… answered", _n(before.answered), _n(after.answered)),
        ("… short hang-ups", _n(before.short_hangups), _n(after.short_hangups)),
        ("short hang-up rate", _pct(before.short_hangup_rate), _pct(after.short_hangup_rate)),
        ("marketing emails", _n(before.emails), _n(after.emails)),
        ("… past their unread deadline", _n(before.emails_settled), _n(after.emails_settled)),
        ("… unread", _n(before.unread), _n(after.unread)),
        ("unread rate", _pct(before.unread_rate), _pct(after.unread_rate)),
    ]
    body = "".join(
        f'<tr><th scope="row">{escape(label)}</th><td>{escape(b)}</td><td>{escape(a)}</td></tr>' for label, b, a in rows
    )
    return (
        '<table class="small-table"><caption>Reactions among contacts that go out</caption>'
        f"<thead><tr><th></th><th>before</th><th>after</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _counter_table(caption: str, names: tuple[str, ...], rows: list[tuple[tuple[str, ...], int]], total: int) -> str:
    if not rows:
        return (
            f'<table class="small-table"><caption>{escape(caption)}</caption>'
            "<tbody><tr><td>none</td></tr></tbody></table>"
        )
    head = "".join(f"<th>{escape(name)}</th>" for name in names) + "<th>count</th><th>share</th>"
    body = "".join(
        "<tr>"
        + "".join(f"<td>{escape(str(value))}</td>" for value in key)
        + f'<td class="num">{_n(count)}</td><td class="num">{_pct(count / total if total else None)}</td></tr>'
        for key, count in rows
    )
    return (
        f'<table class="small-table"><caption>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _method() -> str:
    items = [
        "<b>Before</b> is the history replayed as it happened, with the same engine as <code>fatigue replay</code>. "
        "<b>Sender violations</b> are what that replay reports: contacts made on a channel the policy had blocked at "
        "that moment, or inside quiet hours, had the guard been on and the senders ignored it.",
        "<b>After</b> is the history as it would have gone out had every sender honoured the guard: events are "
        "replayed in order, and a counted contact that would have been a violation is <b>blocked</b>: it is dropped "
        "instead of being fed, so it never counts toward a cap, an unread streak or a later block. Its outcomes "
        "(<code>call_ended</code> / <code>email_opened</code> whose <code>ref</code> names it) and redeliveries are "
        "dropped with it. Reactions the history does not link to a contact (unsubscribe, complaint, SMS STOP, "
        "preferences, outcomes without <code>ref</code>) are kept, so the after world is, if anything, pessimistic. "
        "Replaying the after stream with <code>fatigue replay</code> gives its decisions exactly and no violations.",
        "A blocked contact's <b>reason</b> is the reason of the block in force (the winner of the decision), or "
        "<code>quiet_hours</code>. <b>Customers protected</b>: customers with at least one blocked contact.",
        "Figures count <b>counted contacts</b> only (the categories the policy counts; transactional messages are "
        "never blocked). <b>Customer-weeks</b> are ISO weeks (Monday 00:00 UTC) in which a customer had at least "
        "one counted contact before or after; in the after world a customer-week whose contacts were all blocked "
        "counts as 0.",
        "<b>Short hang-up rate</b>: answered calls shorter than the policy's threshold, per call with a "
        "<code>call_ended</code> that refers to it. <b>Unread rate</b>: marketing emails without a human open at or "
        "before the policy's unread deadline, per email whose deadline passed before the end of the history. "
        "Outcomes are those recorded in the history: the backtest does not guess how a customer who was called "
        "less would have reacted.",
    ]
    return (
        '<section id="method"><h2>How to read this</h2><ul>'
        + "".join(f"<li>{item}</li>" for item in items)
        + "</ul></section>"
    )


# ---------------------------------------------------------------------------------------------- charts


def _figure(caption: str, chart: str, legend: str = "") -> str:
    return f'<figure class="chart-box"><figcaption>{escape(caption)}</figcaption>{chart}{legend}</figure>'


def _legend(colors: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{color}"></span>{escape(name)}</span>'
        for name, color in colors.items()
    )
    return f'<div class="legend">{items}</div>'


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _hbar_stacked(rows: list[tuple[str, list[tuple[str, int]]]], colors: dict[str, str], label: str) -> str:
    """Horizontal bars, one per row, stacked by series; the total at the end of each bar."""
    rows = [(name, parts) for name, parts in rows if sum(count for _, count in parts) > 0]
    if not rows:
        return _empty(f"No {label}.")
    width, bar_h, gap, left, right, top = 560, 22, 8, 150, 70, 8
    height = top + len(rows) * (bar_h + gap) + 24
    largest = max(sum(count for _, count in parts) for _, parts in rows)
    ticks = _ticks(largest)
    scale = (width - left - right) / ticks[-1]
    out = [_svg_open(width, height, label)]
    for tick in ticks:
        x = left + tick * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{height - 20}" class="grid"/>'
            f'<text x="{x:.1f}" y="{height - 6}" class="tick" text-anchor="middle">{_n(tick)}</text>'
        )
    for row_index, (name, parts) in enumerate(rows):
        y = top + row_index * (bar_h + gap)
        out.append(
            f'<text x="{left - 8}" y="{y + bar_h / 2 + 4:.1f}" class="label" text-anchor="end">{escape(_clip(name))}'
            f"<title>{escape(name)}</title></text>"
        )
        x = float(left)
        total = 0
        for series, count in parts:
            if count <= 0:
                continue
            w = count * scale
            out.append(
                f'<rect class="mark" x="{x:.1f}" y="{y}" width="{max(w, 0.8):.1f}" height="{bar_h}" '
                f'fill="{colors.get(series, OTHER_COLOR)}"><title>{escape(name)} · {escape(series)}: {_n(count)}'
                "</title></rect>"
            )
            x += w
            total += count
        out.append(f'<text x="{x + 5:.1f}" y="{y + bar_h / 2 + 4:.1f}" class="value">{_n(total)}</text>')
    out.append("</svg>")
    return "".join(out)


def _vbar_grouped(categories: list[str], series: list[tuple[str, str, list[int]]], label: str) -> str:
    """Vertical bars: one group per category, one bar per series."""
    if not categories or not any(any(values) for _, _, values in series):
        return _empty(f"No {label}.")
    width, height, left, right, top, bottom = 560, 260, 58, 10, 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = _ticks(max(max(values) for _, _, values in series))
    scale = plot_h / ticks[-1]
    group_w = plot_w / len(categories)
    bar_w = max(group_w * 0.8 / len(series), 1.0)
    out = [_svg_open(width, height, label)]
    for tick in ticks:
        y = top + plot_h - tick * scale
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_n(tick)}</text>'
        )
    for index, category in enumerate(categories):
        x0 = left + index * group_w + group_w * 0.1
        for series_index, (name, color, values) in enumerate(series):
            value = values[index]
            if value <= 0:
                continue
            h = max(value * scale, 0.8)
            x = x0 + series_index * bar_w
            out.append(
                f'<rect class="mark" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{escape(name)}: {_n(value)} {escape(label)} with {escape(category)} '
                "contacts</title></rect>"
            )
        out.append(
            f'<text x="{left + (index + 0.5) * group_w:.1f}" y="{top + plot_h + 16}" class="tick" '
            f'text-anchor="middle">{escape(category)}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" class="axis" text-anchor="middle">'
        "counted contacts in the customer-week</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _weekly_chart(before: dict[int, int], after: dict[int, int]) -> str:
    weeks = sorted(set(before) | set(after))
    if not weeks:
        return _empty("No contacts.")
    week_ms = 7 * 86_400_000
    span = list(range(weeks[0], weeks[-1] + week_ms, week_ms))
    width, height, left, right, top, bottom = 560, 240, 58, 12, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = _ticks(max(max(before.values(), default=0), max(after.values(), default=0)))
    y_scale = plot_h / ticks[-1]
    x_step = plot_w / max(len(span) - 1, 1)
    out = [_svg_open(width, height, "weekly contacts")]
    for tick in ticks:
        y = top + plot_h - tick * y_scale
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_n(tick)}</text>'
        )
    for ms, text in _month_ticks(span[0], span[-1]):
        x = left + (ms - span[0]) / week_ms * x_step
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" class="grid"/>'
            f'<text x="{x:.1f}" y="{height - 8}" class="tick" text-anchor="middle">{escape(text)}</text>'
        )
    for name, values, color in (("before", before, BEFORE_COLOR), ("after", after, AFTER_COLOR)):
        points = " ".join(
            f"{left + index * x_step:.1f},{top + plot_h - values.get(week, 0) * y_scale:.1f}"
            for index, week in enumerate(span)
        )
        if len(span) == 1:
            x = left + plot_w / 2
            y = top + plot_h - values.get(span[0], 0) * y_scale
            points = f"{x - 4:.1f},{y:.1f} {x + 4:.1f},{y:.1f}"
        out.append(
            f'<polyline class="mark" points="{points}" fill="none" stroke="{color}" stroke-width="1.8" '
            f'stroke-linejoin="round"><title>{name}: {_n(sum(values.values()))} contacts</title></polyline>'
        )
    out.append("</svg>")
    return "".join(out)


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}" style="{_FONT}">'
    )


def _ticks(largest: float) -> list[int]:
    """Round axis ticks from 0 to at least ``largest`` (about 5 of them)."""
    if largest <= 0:
        return [0, 1]
    raw = largest / 5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(int(step), 1)
    top = -(-math.ceil(largest) // step) * step
    return list(range(0, top + step, step))


def _month_ticks(start_ms: int, end_ms: int) -> list[tuple[int, str]]:
    """Month starts between two instants, thinned to at most 8 labels (``Jan 2008``...)."""
    start = _EPOCH + timedelta(milliseconds=start_ms)
    year, month = start.year, start.month
    found: list[tuple[int, int, int]] = []  # (ms, year, month)
    while True:
        month += 1
        if month > 12:
            year, month = year + 1, 1
        ms = (datetime(year, month, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
        if ms > end_ms:
            break
        found.append((ms, year, month))
    kept = found
    for every in (1, 2, 3, 6, 12, 24, 60):
        # ticks on multiples of `every` months, so January stays a tick when there is room for it
        kept = [tick for tick in found if (tick[1] * 12 + tick[2] - 1) % every == 0]
        if len(kept) <= 8:
            break
    return [(ms, f"{_MONTHS[month - 1]} {year}") for ms, year, month in kept]


_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _buckets(histogram: dict[int, int], policies: Sequence[PolicyBacktest]) -> list[str]:
    largest = max((max(result.before.per_week.histogram, default=0) for result in policies), default=0)
    largest = max(largest, max(histogram, default=0))
    if largest < HISTOGRAM_BUCKETS:
        return [str(value) for value in range(largest + 1)]
    return [str(value) for value in range(HISTOGRAM_BUCKETS)] + [f"{HISTOGRAM_BUCKETS}+"]


def _bucket_values(histogram: dict[int, int], policies: Sequence[PolicyBacktest]) -> list[int]:
    buckets = _buckets(histogram, policies)
    values = [0] * len(buckets)
    for contacts, weeks in histogram.items():
        values[min(contacts, len(buckets) - 1)] += weeks
    return values


# ---------------------------------------------------------------------------------------------- helpers


def _reasons_in(policies: Sequence[PolicyBacktest]) -> list[str]:
    totals: Counter[str] = Counter()
    for result in policies:
        for (reason, _channel), count in result.suppressed_by_reason_channel.items():
            totals[reason] += count
    return [reason for reason, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))]


def _suppressed_for_reason(result: PolicyBacktest, reason: str) -> int:
    return sum(count for (name, _), count in result.suppressed_by_reason_channel.items() if name == reason)


def _blocks(world: World) -> int:
    return sum(count for (action, _, _), count in world.decisions.items() if action == "block")


def _top(counter: Counter[_K]) -> list[tuple[_K, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))[:TOP_ROWS]


_POLICY_COLORS: Final = ("#2f6db5", "#e15759", "#59a14f", "#b07aa1", "#f28e2b", "#76b7b2")


def _policy_color(index: int) -> str:
    return _POLICY_COLORS[index % len(_POLICY_COLORS)]


def _period(world: World) -> str:
    if world.first_ms is None or world.last_ms is None:
        return "no accepted events"
    first = (_EPOCH + timedelta(milliseconds=world.first_ms)).strftime("%Y-%m-%d")
    last = (_EPOCH + timedelta(milliseconds=world.last_ms)).strftime("%Y-%m-%d")
    return f"{first} → {last} (UTC)"


def _slug(text: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in text.lower()).strip("-") or "policy"


def _clip(text: str, size: int = 22) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _n(value: int) -> str:
    return f"{value:,}"


def _opt(value: int | None) -> str:
    return "–" if value is None else _n(value)


def _dec(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


_CSS: Final = """
:root{--fg:#1f2933;--muted:#5f6b7a;--line:#e3e7ec;--bg:#ffffff;--panel:#f6f8fa}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1200px;padding:24px 28px 40px;color:var(--fg);background:var(--bg);
font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 6px;border-bottom:1px solid var(--line);
padding-bottom:4px}
.sub,.description,.small,.detail,.version{color:var(--muted)}.version{font-size:13px;font-weight:normal}
.note{background:#fff8e1;border-left:4px solid #edc948;padding:6px 10px;margin:10px 0}
code{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12.5px;background:var(--panel);padding:0 3px;
border-radius:3px}
.cards-title{margin:14px 0 6px;font-weight:600}.cards-title a{color:inherit}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.card .label{font-size:12px;color:var(--muted)}.card .value{font-size:20px;font-weight:650;margin:2px 0}
.card .detail{font-size:12px}
table{border-collapse:collapse;margin:14px 0}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
thead th{font-size:12px;color:var(--muted)}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.compare td{font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px;align-items:start}
.chart-box{margin:0;padding:10px;border:1px solid var(--line);border-radius:6px;overflow-x:auto}
figcaption{font-weight:600;margin-bottom:6px}
svg.chart{display:block;max-width:100%;height:auto}
svg .grid{stroke:#e8ebef;stroke-width:1}svg .tick{font-size:11px;fill:#6b7785}
svg .label{font-size:12px;fill:#1f2933}svg .value{font-size:11px;fill:#1f2933}svg .axis{font-size:11px;fill:#6b7785}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:12px;margin-top:4px;color:var(--muted)}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.tables{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}.small-table{font-size:13px}
.empty{color:var(--muted);font-style:italic;padding:20px 0}
#method li{margin:6px 0}footer{margin-top:28px;color:var(--muted);font-size:12px}
@media print{.grid{grid-template-columns:1fr}}
"""

_CHECK_JS: Final = """
(function () {
  function check() {
    var charts = document.querySelectorAll('svg.chart'), drawn = 0;
    charts.forEach(function (svg) {
      var box = svg.getBoundingClientRect(), marks = 0;
      svg.querySelectorAll('.mark').forEach(function (mark) {
        var b = mark.getBBox();
        if (b.width > 0 || b.height > 0) { marks += 1; }
      });
      if (box.width > 0 && box.height > 0 && marks > 0) { drawn += 1; }
    });
    document.documentElement.setAttribute('data-charts-rendered', String(drawn));
    document.documentElement.setAttribute('data-charts-total', String(charts.length));
  }
  check();
  window.addEventListener('load', check);
})();
"""
