#!/usr/bin/env python3
"""The benchmark report: bench/proxy.sh's results as Markdown and SVG plots.

  report.py [-o DIR] [--note TEXT] RESULTS...

Reads one or more results files (`RESULTS=FILE bench/proxy.sh`) and writes
into DIR (default target/bench-report) report.md, throughput.svg, p99.svg,
cpu.svg and memory.svg. Figures are medians over rounds (the lower middle
one, as proxy.sh's tables: a value that was measured); a ratio is the
median of each round's ratio, so that it compares figures taken within
seconds of each other on a machine whose load drifts. Several files count
as rounds of one run. Standard library only: it runs where the benchmark
does.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

TARGETS = ("direct", "twemproxy", "ferrox")
PROXIES = ("twemproxy", "ferrox")
TESTS = ("GET", "SET")
# Okabe-Ito: told apart with any colour vision and in greyscale.
COLORS = {"direct": "#8c8c8c", "twemproxy": "#e69f00", "ferrox": "#0072b2"}
SHORT = {"plain": "plain", "P16": "P16", "P16-1KiB": "P16, 1 KiB", "P16-16KiB": "P16, 16 KiB"}
DESCRIBED = {
    "plain": "GET/SET, unpipelined",
    "P16": "GET/SET, 16 requests pipelined",
    "P16-1KiB": "GET/SET of 1 KiB values, 16 pipelined",
    "P16-16KiB": "GET/SET of 16 KiB values, 16 pipelined",
}
FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"


class ResultsError(ValueError):
    """A results file that does not read as proxy.sh writes them."""


@dataclass
class Request:
    scenario: str
    test: str
    target: str
    run: tuple[int, str]  # (file, round): rounds of two files are apart
    rps: float
    p50: float
    p99: float
    cpu: float | None
    frames: float | None


@dataclass
class Results:
    meta: dict[str, list[str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    memory: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # (target, idle connections) -> GET/s of 100 active clients beside them.
    active: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # (scenario, target) -> {run: CPU-seconds of the whole machine per
    # million requests}: clients, backends, kernel and proxy together.
    machine: dict[tuple[str, str], dict] = field(default_factory=dict)


def _number(text: str, where: str) -> float | None:
    if text in ("-", "n/a", "?", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ResultsError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ResultsError(f"{where}: not a measurement: {text!r}")
    return value


def parse(paths: list[str]) -> Results:
    results = Results()
    seen: set[tuple[str, str, str, tuple[int, str]]] = set()
    for index, path in enumerate(paths):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip() or line.startswith("#"):
                    continue
                where = f"{path}:{lineno}"
                fields = line.split("\t")
                kind = fields[0]
                if kind == "meta" and len(fields) == 3:
                    values = results.meta.setdefault(fields[1], [])
                    if fields[2] not in values:
                        values.append(fields[2])
                elif kind == "request" and len(fields) == 10:
                    scenario, test, target, rnd = fields[1:5]
                    if target not in TARGETS:
                        raise ResultsError(f"{where}: unknown target {target!r}")
                    rps, p50, p99 = (_number(x, where) for x in fields[5:8])
                    if rps is None or p50 is None or p99 is None:
                        raise ResultsError(f"{where}: a request line without req/s, p50 or p99")
                    key = (scenario, test, target, (index, rnd))
                    if key in seen:
                        raise ResultsError(f"{where}: {scenario} {test} {target} round {rnd} twice")
                    seen.add(key)
                    results.requests.append(
                        Request(scenario, test, target, (index, rnd), rps, p50, p99,
                                _number(fields[8], where), _number(fields[9], where)))
                elif kind == "memory" and len(fields) == 4:
                    target = fields[1]
                    if target not in PROXIES:
                        raise ResultsError(f"{where}: unknown proxy {target!r}")
                    if not fields[2].isdigit() or int(fields[2]) == 0:
                        raise ResultsError(f"{where}: not a connection count: {fields[2]!r}")
                    # Memory can shrink when connections open (a heap
                    # trimmed), so a negative difference is a measurement.
                    try:
                        kib = float(fields[3])
                    except ValueError:
                        raise ResultsError(f"{where}: not a number: {fields[3]!r}") from None
                    results.memory.setdefault((target, int(fields[2])), []).append(kib)
                elif kind == "active" and len(fields) == 5:
                    target = fields[1]
                    if target not in PROXIES:
                        raise ResultsError(f"{where}: unknown proxy {target!r}")
                    if not fields[2].isdigit():
                        raise ResultsError(f"{where}: not a connection count: {fields[2]!r}")
                    rate = _number(fields[3], where)
                    if rate is not None:
                        results.active.setdefault((target, int(fields[2])), []).append(rate)
                elif kind == "machine" and len(fields) == 5:
                    scenario, target, rnd = fields[1:4]
                    if target not in TARGETS:
                        raise ResultsError(f"{where}: unknown target {target!r}")
                    cpu = _number(fields[4], where)
                    if cpu is not None:
                        results.machine.setdefault((scenario, target), {})[(index, rnd)] = cpu
                else:
                    raise ResultsError(f"{where}: not a meta, request, memory, active or machine line "
                                       f"with its number of fields: {line!r}")
    if not results.requests and not results.memory and not results.active:
        raise ResultsError("no measurements in " + ", ".join(paths))
    return results


def median(values: list[float]) -> float | None:
    return statistics.median_low(values) if values else None


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


class Summary:
    """Medians and same-round ratios out of the results."""

    def __init__(self, results: Results):
        self.results = results
        reqs = results.requests
        self.scenarios = _ordered(r.scenario for r in reqs)
        # GET before SET, as proxy.sh's table (redis-benchmark runs SET first).
        self.groups = [(s, t) for s in self.scenarios
                       for t in sorted(_ordered(r.test for r in reqs if r.scenario == s),
                                       key=lambda t: TESTS.index(t) if t in TESTS else len(TESTS))]
        self.targets = [t for t in TARGETS if any(r.target == t for r in reqs)]
        self.runs = _ordered(r.run for r in reqs)
        self._by = {(r.scenario, r.test, r.target, r.run): r for r in reqs}
        # CPU and frames are per scenario, target and round: one per run.
        self._cpu: dict[tuple[str, str], dict] = {}
        self._frames: dict[str, dict] = {}
        for r in reqs:
            if r.cpu is not None:
                self._cpu.setdefault((r.scenario, r.target), {})[r.run] = r.cpu
            if r.frames is not None:
                self._frames.setdefault(r.scenario, {})[r.run] = r.frames

    def figure(self, scenario: str, test: str, target: str, attr: str) -> float | None:
        return median([getattr(r, attr) for run in self.runs
                       if (r := self._by.get((scenario, test, target, run)))])

    def ratio(self, scenario: str, test: str, num: str, den: str,
              attr: str = "rps") -> tuple[float | None, list[float]]:
        rounds = []
        for run in self.runs:
            a = self._by.get((scenario, test, num, run))
            b = self._by.get((scenario, test, den, run))
            if a and b and getattr(b, attr) > 0:
                rounds.append(getattr(a, attr) / getattr(b, attr))
        return median(rounds), rounds

    def cpu(self, scenario: str, target: str) -> float | None:
        return median(list(self._cpu.get((scenario, target), {}).values()))

    def cpu_ratio(self, scenario: str) -> tuple[float | None, list[float]]:
        f = self._cpu.get((scenario, "ferrox"), {})
        t = self._cpu.get((scenario, "twemproxy"), {})
        rounds = [f[run] / t[run] for run in self.runs if run in f and run in t and t[run] > 0]
        return median(rounds), rounds

    def frames(self, scenario: str) -> float | None:
        return median(list(self._frames.get(scenario, {}).values()))

    def machine_cpu(self, scenario: str, target: str) -> float | None:
        return median(list(self.results.machine.get((scenario, target), {}).values()))

    def active(self, target: str, idle: int) -> float | None:
        return median(self.results.active.get((target, idle), []))

    def memory(self, target: str, conns: int) -> float | None:
        return median(self.results.memory.get((target, conns), []))

    def memory_counts(self) -> list[int]:
        return sorted({n for _, n in self.results.memory})

    def meta(self, key: str, default: str = "unknown") -> str:
        values = self.results.meta.get(key)
        return " / ".join(values) if values else default


# ---------------------------------------------------------------- numbers


def _clean(v: float) -> float:
    # Tick arithmetic leaves 0.30000000000000004; twelve digits are plenty.
    return float(f"{v:.12g}")


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 up to the first round step at or above `top`, about `count` steps."""
    if not top > 0:
        top = 1.0
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * magnitude
        if step * count >= top:
            break
    n = math.ceil(_clean(top / step))
    return [_clean(i * step) for i in range(n + 1)]


def short_number(v: float) -> str:
    """Three significant digits, k and M for thousands and millions."""
    # Rounded first, so that 999,600 is 1M and not 1000k.
    r = float(f"{v:.3g}")
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(r) >= scale:
            return f"{_clean(r / scale):g}{suffix}"
    return f"{r:g}"


def tick_number(v: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{_clean(v / scale):g}{suffix}"
    return f"{_clean(v):g}"


def _ratio_text(value: float | None, rounds: list[float]) -> str:
    if value is None:
        return "–"
    text = f"{value:.2f}"
    if len(rounds) > 1:
        text += " (" + " ".join(f"{r:.2f}" for r in rounds) + ")"
    return text


def _or_dash(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


# ---------------------------------------------------------------- SVG


class Svg:
    """Elements in order; attribute names with _ become -, a trailing _ goes."""

    def __init__(self, width: int, height: int, title: str, desc: str):
        self.width, self.height = width, height
        self.parts = [f"<title>{escape(title)}</title>", f"<desc>{escape(desc)}</desc>",
                      f'<rect width="{width}" height="{height}" fill="#ffffff"/>']

    @staticmethod
    def _attrs(attrs: dict) -> str:
        out = []
        for key, value in attrs.items():
            if value is None:
                continue
            name = key.rstrip("_").replace("_", "-")
            if isinstance(value, float):
                value = f"{value:.2f}".rstrip("0").rstrip(".")
            out.append(f" {name}={quoteattr(str(value))}")
        return "".join(out)

    def add(self, tag: str, text: str | None = None, tooltip: str | None = None, **attrs) -> None:
        a = self._attrs(attrs)
        inner = (f"<title>{escape(tooltip)}</title>" if tooltip else "") + \
            (escape(text) if text is not None else "")
        self.parts.append(f"<{tag}{a}>{inner}</{tag}>" if inner else f"<{tag}{a}/>")

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "middle",
             **attrs) -> None:
        self.add("text", text, x=x, y=y, font_size=size, text_anchor=anchor, **attrs)

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
                f'font-family={quoteattr(FONT)} role="img">\n{body}\n</svg>\n')


WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 24, 88, 66


def _frame(title: str, subtitle: str, series: list[str], line: bool = False) -> Svg:
    svg = Svg(WIDTH, HEIGHT, title, subtitle)
    svg.text(LEFT, 24, title, size=16, anchor="start", font_weight="bold", class_="chart-title")
    svg.text(LEFT, 44, subtitle, size=11, anchor="start", fill="#555555", class_="subtitle")
    x = LEFT
    for name in series:
        if line:
            svg.add("line", x1=x, y1=62, x2=x + 18, y2=62, stroke=COLORS[name], stroke_width=2.5)
            svg.add("circle", cx=x + 9, cy=62, r=3.5, fill=COLORS[name])
        else:
            svg.add("rect", x=x + 3, y=56, width=12, height=12, fill=COLORS[name])
        svg.text(x + 24, 66, name, size=12, anchor="start", class_="legend", data_series=name)
        x += 44 + 7.5 * len(name)
    return svg


def _y_axis(svg: Svg, ticks: list[float], label: str) -> None:
    plot_h = HEIGHT - TOP - BOTTOM
    top = ticks[-1]
    for t in ticks:
        y = TOP + plot_h - t / top * plot_h
        svg.add("line", x1=LEFT, y1=y, x2=WIDTH - RIGHT, y2=y,
                stroke="#e3e3e3" if t else "#000000", stroke_width=1, class_="grid",
                data_value=repr(t))
        svg.add("line", x1=LEFT - 5, y1=y, x2=LEFT, y2=y, stroke="#000000", stroke_width=1)
        svg.text(LEFT - 8, y + 4, tick_number(t), size=11, anchor="end", class_="ytick",
                 data_value=repr(t))
    svg.add("line", x1=LEFT, y1=TOP, x2=LEFT, y2=TOP + plot_h, stroke="#000000", stroke_width=1)
    cy = TOP + plot_h / 2
    svg.text(18, cy, label, size=12, transform=f"rotate(-90 18 {cy:.2f})", class_="ylabel")


def bar_chart(title: str, subtitle: str, y_label: str, groups: list[tuple[str, str]],
              series: list[str], values: dict[tuple[int, str], float | None], unit: str) -> str:
    """Bars of `series` side by side in each group, from 0 on a linear axis.

    groups are (label, section) pairs: the label under each group, the
    section once under a run of groups that share it.
    """
    svg = _frame(title, subtitle, series)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    present = [v for v in values.values() if v is not None]
    ticks = nice_ticks(max(present, default=0.0))
    _y_axis(svg, ticks, y_label)
    top = ticks[-1]
    slot = plot_w / max(len(groups), 1)
    bar_w = min(40.0, slot * 0.8 / max(len(series), 1))
    base = TOP + plot_h
    for gi, (label, section) in enumerate(groups):
        x0 = LEFT + gi * slot + (slot - bar_w * len(series)) / 2
        for si, name in enumerate(series):
            v = values.get((gi, name))
            cx = x0 + si * bar_w + bar_w / 2
            if v is None:
                svg.text(cx, base - 4, "–", size=10, fill="#555555")
                continue
            h = v / top * plot_h
            svg.add("rect", tooltip=f"{name}, {section} {label}: {short_number(v)} {unit}",
                    x=x0 + si * bar_w + 1, y=base - h, width=bar_w - 2, height=h,
                    fill=COLORS[name], class_="bar", data_series=name,
                    data_group=f"{section} {label}".strip(), data_value=repr(v))
            svg.text(cx, base - h - 4, short_number(v), size=9.5, class_="value")
        svg.text(LEFT + (gi + 0.5) * slot, base + 17, label, size=12, class_="xtick")
    # Sections: a name under each run of groups, a rule between runs.
    start = 0
    for gi in range(1, len(groups) + 1):
        if gi == len(groups) or groups[gi][1] != groups[start][1]:
            if groups[start][1]:
                svg.text(LEFT + (start + gi) / 2 * slot, base + 38, groups[start][1],
                         size=12, font_weight="bold", class_="section")
            if gi < len(groups):
                x = LEFT + gi * slot
                svg.add("line", x1=x, y1=base, x2=x, y2=base + 44, stroke="#bbbbbb", stroke_width=1)
            start = gi
    return svg.render()


def line_chart(title: str, subtitle: str, x_label: str, y_label: str,
               points: dict[str, list[tuple[int, float]]], unit: str) -> str:
    """One line per series over a linear x axis from 0, markers at the points."""
    series = [s for s in points if points[s]]
    svg = _frame(title, subtitle, series, line=True)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    ys = [v for s in series for _, v in points[s]]
    xs = [x for s in series for x, _ in points[s]]
    yticks = nice_ticks(max(ys, default=0.0))
    xticks = nice_ticks(max(xs, default=0), count=6)
    _y_axis(svg, yticks, y_label)
    base = TOP + plot_h
    ytop, xtop = yticks[-1], xticks[-1]
    # Values below 0 (memory given back) sit on the axis; the label says.
    def px(x: float) -> float:
        return LEFT + x / xtop * plot_w

    def py(v: float) -> float:
        return base - max(v, 0.0) / ytop * plot_h

    for t in xticks:
        svg.add("line", x1=px(t), y1=base, x2=px(t), y2=base + 5, stroke="#000000", stroke_width=1)
        svg.text(px(t), base + 18, tick_number(t), size=11, class_="xtick", data_value=repr(t))
    svg.text(LEFT + plot_w / 2, base + 44, x_label, size=12, class_="xlabel")
    for name in series:
        pts = sorted(points[name])
        svg.add("polyline", points=" ".join(f"{px(x):.2f},{py(v):.2f}" for x, v in pts),
                fill="none", stroke=COLORS[name], stroke_width=2.5, class_="line",
                data_series=name)
        for x, v in pts:
            svg.add("circle", tooltip=f"{name}, {x} connections: {v:g} {unit}",
                    cx=px(x), cy=py(v), r=4, fill=COLORS[name], class_="point",
                    data_series=name, data_x=str(x), data_value=repr(v))
            svg.text(px(x), py(v) - 9, short_number(v), size=10, class_="value",
                     fill=COLORS[name])
    return svg.render()


# ---------------------------------------------------------------- report


def _lcores(text: str) -> str:
    """ferrox's --lcores list as a count: "0" one, "0-1" two, "0,2" two."""
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return f"lcores {text}"
        count += int(hi) - int(lo) + 1 if hi else 1
    return f"{count} lcore" + ("s" if count != 1 else "")


HOST_NIC = {
    "gro": "GRO in a NAPI thread of its own, as a host's NIC driver",
    "inline": "veth's defaults: each frame received inside ferrox's transmit call",
    "unknown": "veth's defaults (not recorded)",
}


def subtitle(s: Summary) -> str:
    pmd = " / ".join(v.split()[0] for v in s.results.meta.get("pmd", ["?"]))
    return (f"MTU {s.meta('mtu')} · {pmd} · ferrox on {_lcores(s.meta('lcores', '0'))} · "
            f"{s.meta('vcpus')} vCPUs · Linux {s.meta('kernel')} · DPDK {s.meta('dpdk')} · "
            f"{s.meta('date')[:10]}")


def _scenario(name: str) -> str:
    return SHORT.get(name, name)


def _cpu_resolution(s: Summary) -> str:
    # /proc counts CPU time in clock ticks: one tick over a short run is a
    # visible step, and a reader should know how large.
    try:
        hz, n = float(s.meta("clk_tck")), float(s.meta("requests"))
    except ValueError:
        return ""
    if hz <= 0 or n <= 0:
        return ""
    step = 1 / hz / (2 * n / 1e6)
    return (f" /proc counts CPU time in ticks of 1/{hz:g} s: over the 2 × {n:,.0f} "
            f"requests of a scenario one tick is {step:.2g} µs per request, the "
            "resolution of these figures.")


def _source(relpath: str) -> str:
    # A link only to a file that travels with the report.
    if relpath.startswith(".."):
        return f"`{os.path.basename(relpath)}`"
    return f"[{os.path.basename(relpath)}]({relpath})"


def charts(s: Summary) -> dict[str, str]:
    sub = subtitle(s)
    out = {}
    if s.groups:
        groups = [(test, _scenario(scen)) for scen, test in s.groups]
        for name, attr, title, label, unit in (
                ("throughput.svg", "rps", "Throughput: direct Redis, twemproxy, ferrox",
                 "requests per second (median; higher is better)", "req/s"),
                ("p99.svg", "p99", "p99 latency: direct Redis, twemproxy, ferrox",
                 "p99 latency, ms (median; lower is better)", "ms")):
            values = {(gi, t): s.figure(scen, test, t, attr)
                      for gi, (scen, test) in enumerate(s.groups) for t in s.targets}
            out[name] = bar_chart(title, sub, label, groups, s.targets, values, unit)
        proxies = [t for t in PROXIES if t in s.targets]
        values = {(gi, t): s.cpu(scen, t) for gi, scen in enumerate(s.scenarios) for t in proxies}
        if any(v is not None for v in values.values()):
            out["cpu.svg"] = bar_chart(
                "Proxy CPU per request (GET and SET together)", sub,
                "proxy CPU, µs per request (median)",
                [(_scenario(scen), "") for scen in s.scenarios], proxies, values, "µs")
    counts = s.memory_counts()
    if counts:
        points = {t: [(n, v) for n in counts if (v := s.memory(t, n)) is not None]
                  for t in PROXIES}
        out["memory.svg"] = line_chart(
            "Memory per idle client connection", sub, "idle client connections held",
            "KiB per connection (heap + hugepages)", points, "KiB")
    return out


def markdown(s: Summary, svgs: dict[str, str], sources: list[str], note: str | None) -> str:
    m = s.meta
    rounds = len(s.runs)
    lines = ["# ferrox benchmark report", ""]
    if note:
        lines += [note, ""]
    lines += [
        "Written by `bench/report.py` from `bench/proxy.sh`'s results ("
        + ", ".join(_source(p) for p in sources) + "). "
        "Direct Redis, twemproxy and ferrox are measured in the same run, back "
        "to back in each round, on the same four `redis-server` backends; figures "
        f"are medians of {rounds} round{'s' if rounds != 1 else ''}, and a ratio is "
        "the median of each round's ratio (every round's in brackets). Absolute "
        "figures move between runs on a shared machine; compare the ratios.",
        "",
        "## Machine and run",
        "",
        "| | |",
        "|---|---|",
        f"| date (UTC) | {m('date')} |",
        f"| CPU | {m('cpu')}, {m('vcpus')} vCPUs |",
        f"| memory | {m('memory')} |",
        f"| kernel | Linux {m('kernel')} |",
        f"| DPDK | {m('dpdk')} |",
        f"| ferrox's port | {m('pmd')}, MTU {m('mtu')} |",
        f"| the hosts' NIC (veth0) | {HOST_NIC.get(m('host_nic'), m('host_nic'))} |",
        f"| ferrox's cores | `--lcores {m('lcores', '0')}` ({_lcores(m('lcores', '0'))}) |",
        f"| ferrox build | {m('ferrox')}"
        + (f", with `{m('dp_args')}`" if m("dp_args", "-") != "-" else "") + " |",
        f"| twemproxy | {m('twemproxy')} (the same `nutcracker.yml` as ferrox) |",
        f"| Redis | {m('redis')} |",
        f"| load | redis-benchmark, {m('clients')} clients, random keys among {m('keys')}, "
        f"{m('requests')} requests per test and target |",
        "",
    ]
    if s.scenarios:
        lines += ["Scenarios: " + "; ".join(
            f"**{_scenario(x)}**: {DESCRIBED.get(x, x)}" for x in s.scenarios) + ".", ""]
    facts = (f"Every figure: MTU {m('mtu')}, {m('pmd')}, ferrox on "
             f"{_lcores(m('lcores', '0'))}, {m('vcpus')} vCPUs shared by the clients, "
             f"the backends and both proxies.")
    if "throughput.svg" in svgs:
        lines += ["## Throughput", "", "![Throughput per scenario](throughput.svg)", "", facts, "",
                  "| scenario | test | direct req/s | twemproxy req/s | ferrox req/s "
                  "| ferrox/twemproxy | ferrox/direct |",
                  "|---|---|---|---|---|---|---|"]
        for scen, test in s.groups:
            row = [_or_dash(s.figure(scen, test, t, "rps"), ",.0f") for t in TARGETS]
            lines.append(f"| {_scenario(scen)} | {test} | " + " | ".join(row) + " | "
                         + _ratio_text(*s.ratio(scen, test, "ferrox", "twemproxy")) + " | "
                         + _ratio_text(*s.ratio(scen, test, "ferrox", "direct")) + " |")
        lines.append("")
    if "p99.svg" in svgs:
        lines += ["## Latency", "", "![p99 latency per scenario](p99.svg)", "", facts,
                  "Latency is redis-benchmark's, per request, with 50 clients in flight.", "",
                  "| scenario | test | p50 ms (direct / twemproxy / ferrox) "
                  "| p99 ms (direct / twemproxy / ferrox) | p99 ferrox/twemproxy (< 1: ferrox lower) |",
                  "|---|---|---|---|---|"]
        for scen, test in s.groups:
            p50 = " / ".join(_or_dash(s.figure(scen, test, t, "p50"), ".3f") for t in TARGETS)
            p99 = " / ".join(_or_dash(s.figure(scen, test, t, "p99"), ".3f") for t in TARGETS)
            lines.append(f"| {_scenario(scen)} | {test} | {p50} | {p99} | "
                         + _ratio_text(*s.ratio(scen, test, "ferrox", "twemproxy", "p99")) + " |")
        lines.append("")
    if "cpu.svg" in svgs:
        lines += ["## CPU per request", "", "![Proxy CPU per request](cpu.svg)", "", facts,
                  "CPU is the proxy process's user + system time over GET and SET "
                  "together (from /proc), per request: µs per request, which is "
                  "CPU-seconds per million requests. ferrox's core polls while traffic "
                  "flows, and the kernel's work for the frames it sends is charged to it. "
                  "Frames are those ferrox sent and received on its port, per request."
                  + _cpu_resolution(s), "",
                  "| scenario | twemproxy µs/req | ferrox µs/req | ferrox/twemproxy (< 1: ferrox less) "
                  "| ferrox frames per request |",
                  "|---|---|---|---|---|"]
        for scen in s.scenarios:
            lines.append(f"| {_scenario(scen)} | {_or_dash(s.cpu(scen, 'twemproxy'), '.2f')} | "
                         f"{_or_dash(s.cpu(scen, 'ferrox'), '.2f')} | "
                         f"{_ratio_text(*s.cpu_ratio(scen))} | "
                         f"{_or_dash(s.frames(scen), '.2f')} |")
        lines.append("")
    if s.results.machine:
        lines += ["The whole machine's CPU per request (every vCPU's busy time from "
                  "/proc/stat while a target is measured: the client, the backends, "
                  "the kernel on both sides and the proxy), µs per request. The "
                  "difference to direct Redis is what the proxy's path costs the "
                  "machine, its kernel side included.", "",
                  "| scenario | direct | twemproxy | ferrox | ferrox − direct | twemproxy − direct |",
                  "|---|---|---|---|---|---|"]
        for scen in s.scenarios:
            d, t, f = (s.machine_cpu(scen, x) for x in TARGETS)
            lines.append(f"| {_scenario(scen)} | {_or_dash(d, '.2f')} | {_or_dash(t, '.2f')} | "
                         f"{_or_dash(f, '.2f')} | "
                         f"{_or_dash(f - d if f is not None and d is not None else None, '.2f')} | "
                         f"{_or_dash(t - d if t is not None and d is not None else None, '.2f')} |")
        lines.append("")
    if "memory.svg" in svgs:
        lines += ["## Memory per idle client connection", "",
                  "![Memory per idle connection](memory.svg)", "",
                  "Each proxy, fresh, before the throughput runs: connections that each "
                  "sent a PING and stay open, added count by count and all held; the "
                  "proxy's resident pages of every mapping plus its shared regions whole "
                  "(hugepage files, reserved whether touched or not), against before the "
                  "first, divided by the count. ferrox gives a connection two 2 KiB socket "
                  "buffers (hugepage chunks) when it accepts it, and full ones once its "
                  "requests or replies outgrow them; twemproxy takes buffers while a "
                  "request is read or written.", "",
                  "| idle connections | twemproxy KiB/conn | ferrox KiB/conn | ferrox/twemproxy |",
                  "|---|---|---|---|"]
        for n in s.memory_counts():
            t, f = s.memory("twemproxy", n), s.memory("ferrox", n)
            ratio = f"{f / t:.1f}" if t and f is not None and t > 0 else "–"
            lines.append(f"| {n:,} | {_or_dash(t, '.1f')} | {_or_dash(f, '.1f')} | {ratio} |")
        lines.append("")
    if s.results.active:
        lines += ["The GET rate of 100 unpipelined active clients with no idle connection, "
                  "and beside the most idle connections held (each proxy's own figure "
                  "with none idle is the reference).", "",
                  "| proxy | idle connections | GET/s | vs none idle |", "|---|---|---|---|"]
        for target in PROXIES:
            base = s.active(target, 0)
            for n in sorted({n for t, n in s.results.active if t == target}):
                rate = s.active(target, n)
                ratio = f"{rate / base:.2f}×" if n and rate and base else "–"
                lines.append(f"| {target} | {n:,} | {_or_dash(rate, ',.0f')} | {ratio} |")
        lines.append("")
    else:
        lines += ["Memory per idle connection was not measured in this run "
                  "(IDLE_STEPS empty).", ""]
    return "\n".join(lines)


def write_report(paths: list[str], out_dir: str, note: str | None = None) -> list[str]:
    """Writes report.md and the SVGs into out_dir; returns the files written."""
    summary = Summary(parse(paths))
    os.makedirs(out_dir, exist_ok=True)
    svgs = charts(summary)
    sources = [os.path.relpath(os.path.abspath(p), os.path.abspath(out_dir)) for p in paths]
    written = []
    for name, text in svgs.items():
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(summary, svgs, sources, note))
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results files of bench/proxy.sh (RESULTS=...)")
    parser.add_argument("-o", "--out", default="target/bench-report", help="output directory")
    parser.add_argument("--note", help="a paragraph at the top of the report (what this run was)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.results, args.out, args.note)
    except (OSError, ResultsError) as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 1
    print(os.path.join(args.out, "report.md"))
    for path in written[:-1]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
