"""HTML of the fleet page and the device page (server-rendered, no JavaScript).

Takes the dicts of :mod:`bsipatch.mdm.fleet` and returns complete HTML documents: the
fleet tables, an inline SVG chart of devices per release over time, and links to each
device's page. Every value is escaped. Queries nothing and serves nothing.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:left}th{background:#f4f4f4}.num{text-align:right}.muted{color:#777}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:middle}
"""
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _doc(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}"
        f"</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _cell(v: Any) -> str:
    return "<span class='muted'>-</span>" if v is None or v == "" else escape(str(v))


def _link(name: str) -> str:
    return f"<a href='/devices/{quote(name, safe='')}'>{escape(name)}</a>"


def _table(tid: str, heads: list[str], rows: list[list[str]], empty: str = "none") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    thead = f"<thead><tr>{head}</tr></thead>" if any(heads) else ""
    if not rows:
        return f"<p id='{tid}' class='muted'>{escape(empty)}</p>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table id='{tid}'>{thead}<tbody>{body}</tbody></table>"


def _shown(section: dict[str, Any]) -> str:
    n, shown = section["count"], len(section["devices"])
    more = f" (first {shown} shown)" if shown < n else ""
    return f"<span class='count'>{n}</span> device{'s' if n != 1 else ''}{more}"


def chart_svg(chart: dict[str, Any], width: int = 760, height: int = 240) -> str:
    """An SVG line chart: one line per release, devices on it at each time."""
    series: dict[str, list[int]] = chart["series"]
    times: list[str] = chart["times"]
    if not series or not times:
        return "<p id='chart' class='muted'>no release changes reported yet</p>"
    top = max(1, max(max(v) for v in series.values()))
    left, bottom, plot_w, plot_h = 48, height - 28, width - 60, height - 44
    steps = max(1, len(times) - 1)
    parts = [
        f"<svg id='chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='devices per release over time'>",
        f"<line x1='{left}' y1='{bottom}' x2='{left + plot_w}' y2='{bottom}' stroke='#999'/>",
        f"<line x1='{left}' y1='{bottom}' x2='{left}' y2='{bottom - plot_h}' stroke='#999'/>",
        f"<text x='{left - 6}' y='{bottom - plot_h + 4}' text-anchor='end' font-size='11'>"
        f"{top}</text>",
        f"<text x='{left - 6}' y='{bottom}' text-anchor='end' font-size='11'>0</text>",
        f"<text x='{left}' y='{height - 8}' font-size='11'>{escape(times[0])}</text>",
        f"<text x='{left + plot_w}' y='{height - 8}' text-anchor='end' font-size='11'>"
        f"{escape(times[-1])}</text>",
    ]
    legend = []
    for k, (rel, values) in enumerate(sorted(series.items())):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = " ".join(
            f"{left + plot_w * i / steps:.1f},{bottom - plot_h * v / top:.1f}"
            for i, v in enumerate(values)
        )
        parts.append(
            f"<polyline class='series' data-release='{escape(rel)}' fill='none' "
            f"stroke='{colour}' stroke-width='2' points='{pts}'/>"
        )
        legend.append(
            f"<span><i class='sw' style='background:{colour}'></i>{escape(rel)} "
            f"({values[-1]})</span>"
        )
    parts.append("</svg>")
    return "".join(parts) + f"<div class='legend' id='legend'>{''.join(legend)}</div>"


def fleet_page(data: dict[str, Any]) -> str:
    """The fleet overview page."""
    b = [
        [
            _cell(r["build"]),
            _cell(r["supplemental_build"]),
            _cell(r["release_id"]),
            f"<span class='num'>{r['devices']}</span>",
        ]
        for r in data["builds"]
    ]
    w = [
        [_link(d["name"]), _cell(d["release_id"]), _cell(d["last_seen"])]
        for d in data["withdrawn"]["devices"]
    ]
    df = [
        [
            _link(d["name"]),
            _cell(d["release_id"]),
            _cell(d["deferred_release"]),
            _cell(d["since"]),
            _cell(d["days"]),
        ]
        for d in data["deferred"]["devices"]
    ]
    fl = [
        [_link(d["name"]), _cell(d["release_id"]), _cell(d["error"]), _cell(d["at"])]
        for d in data["failed"]["devices"]
    ]
    ns = [
        [_link(d["name"]), _cell(d["release_id"]), _cell(d["last_seen"])]
        for d in data["not_seen"]["devices"]
    ]
    withdrawn = ", ".join(data["withdrawn"]["releases"]) or "none"
    body = (
        f"<h1>bsipatch fleet</h1><p><span id='total'>{data['devices']}</span> enrolled devices</p>"
        f"<h2>Releases over time</h2>{chart_svg(data['chart'])}"
        "<h2>Devices per OS build and supplemental build</h2>"
        + _table("builds", ["OS build", "supplemental build", "release", "devices"], b)
        + f"<h2>On a withdrawn release</h2><p>withdrawn: {escape(withdrawn)}; "
        f"{_shown(data['withdrawn'])}</p>"
        + _table("withdrawn", ["device", "release", "last seen"], w)
        + f"<h2>Deferred releases</h2><p>{_shown(data['deferred'])}</p>"
        + _table("deferred", ["device", "runs", "deferred release", "since", "days"], df)
        + f"<h2>Failed installs</h2><p>{_shown(data['failed'])}</p>"
        + _table("failed", ["device", "runs", "last error", "at"], fl)
        + f"<h2>Not seen for {escape(str(data['not_seen']['days']))} days</h2>"
        f"<p>{_shown(data['not_seen'])}</p>"
        + _table("not-seen", ["device", "release", "last seen"], ns)
    )
    return _doc("bsipatch fleet", body)


def device_page(d: dict[str, Any]) -> str:
    """One device: summary, release history, declarations, latest status items."""
    summary = [
        ["release", _cell(d["release_id"])],
        ["install state", _cell(d["install_state"])],
        ["last error", _cell(d["last_error"])],
        ["deferred", _cell(d["deferred_release"])],
        ["enrolled", _cell(d["enrolled"])],
        ["last seen", _cell(d["last_seen"])],
    ]
    hist = [
        [
            _cell(h["at"]),
            _cell(h["from"]),
            _cell(h["to"]),
            _cell(h["build"]),
            _cell(h["supplemental_build"]),
        ]
        for h in d["history"]
    ]
    decl = [
        [
            _cell(x["identifier"]),
            _cell("yes" if x["active"] else "no"),
            _cell(x["valid"]),
            _cell("; ".join(r.get("description") or r["code"] for r in x["reasons"])),
        ]
        for x in d["declarations"]
    ]
    items = [
        [
            _cell(k),
            f"<code>{escape(json.dumps(v['value'], sort_keys=True))}</code>",
            _cell(v["updated"]),
        ]
        for k, v in d["items"].items()
    ]
    body = (
        f"<p><a href='/'>fleet</a></p><h1 id='device'>{escape(d['name'])}</h1>"
        + _table("summary", ["", ""], [[f"<b>{k}</b>", v] for k, v in summary])
        + "<h2>Release history</h2>"
        + _table("history", ["at", "from", "to", "OS build", "supplemental build"], hist)
        + "<h2>Declarations</h2>"
        + _table("declarations", ["identifier", "active", "valid", "reasons"], decl)
        + "<h2>Status items</h2>"
        + _table("items", ["item", "value", "updated"], items)
    )
    return _doc(f"{d['name']} - bsipatch fleet", body)


def login_page(error: str = "") -> str:
    """The admin-token form."""
    msg = f"<p id='error' style='color:#b00'>{escape(error)}</p>" if error else ""
    return _doc(
        "bsipatch fleet - sign in",
        f"<h1>bsipatch fleet</h1>{msg}<form method='post' action='/login'>"
        "<label>admin token <input id='token' name='token' type='password' size='50'></label> "
        "<button id='signin' type='submit'>sign in</button></form>",
    )


def not_found(name: str) -> str:
    """A device that is not enrolled."""
    return _doc("not found", f"<p><a href='/'>fleet</a></p><p>no device {escape(name)}</p>")
