#!/usr/bin/env python3
"""Tests of bench/report.py on a fixture: python3 bench/report_test.py

bench/testdata/results.tsv has made-up figures, three rounds, chosen so that
the medians and same-round ratios expected below can be worked out by hand
(the median is the lower middle one, as in proxy.sh's tables).
"""

import contextlib
import io
import os
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import report  # noqa: E402

FIXTURE = os.path.join(HERE, "testdata", "results.tsv")
NS = "{http://www.w3.org/2000/svg}"
CHARTS = ("throughput.svg", "p99.svg", "cpu.svg", "memory.svg")


def texts(root: ET.Element, cls: str) -> list[str]:
    return [e.text or "" for e in root.iter(NS + "text") if e.get("class") == cls]


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(NS + tag) if e.get("class") == cls]


def y_of(root: ET.Element):
    """The y axis as drawn: value -> y, from its grid lines."""
    grid = sorted((float(e.get("data-value")), float(e.get("y1"))) for e in marks(root, "line", "grid"))
    (v0, y0), (v1, y1) = grid[0], grid[-1]
    assert v0 == 0, "the axis starts at 0"
    return lambda v: y0 + (v - v0) / (v1 - v0) * (y1 - y0)


class FixtureReport(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = cls.tmp.name
        report.write_report([FIXTURE], cls.out, note="A fixture, not a measurement.")
        with open(os.path.join(cls.out, "report.md"), encoding="utf-8") as f:
            cls.md = f.read()
        cls.svg = {name: ET.parse(os.path.join(cls.out, name)).getroot() for name in CHARTS}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def bars(self, chart: str) -> dict[tuple[str, str], ET.Element]:
        return {(b.get("data-group"), b.get("data-series")): b
                for b in marks(self.svg[chart], "rect", "bar")}

    def test_svgs_have_title_axes_and_legend(self):
        for name, root in self.svg.items():
            with self.subTest(name):
                self.assertEqual(root.tag, NS + "svg")
                self.assertTrue(root.get("viewBox"))
                self.assertEqual(len(texts(root, "chart-title")), 1)
                self.assertTrue(texts(root, "ylabel")[0])
                self.assertGreaterEqual(len(texts(root, "ytick")), 3)
                self.assertTrue(texts(root, "xtick"))
                sub = texts(root, "subtitle")[0]
                for fact in ("MTU 3438", "net_af_xdp", "1 lcore", "2 vCPUs",
                             "Linux 6.18.44-test", "DPDK 22.11.11", "2026-12-07"):
                    self.assertIn(fact, sub)
        legend = {n: texts(r, "legend") for n, r in self.svg.items()}
        self.assertEqual(legend["throughput.svg"], ["direct", "twemproxy", "ferrox"])
        self.assertEqual(legend["p99.svg"], ["direct", "twemproxy", "ferrox"])
        self.assertEqual(legend["cpu.svg"], ["twemproxy", "ferrox"])
        self.assertEqual(legend["memory.svg"], ["twemproxy", "ferrox"])

    def test_groups_and_sections(self):
        root = self.svg["throughput.svg"]
        self.assertEqual(texts(root, "xtick"), ["GET", "SET", "GET", "SET"])
        self.assertEqual(texts(root, "section"), ["plain", "P16, 1 KiB"])
        self.assertEqual(texts(self.svg["cpu.svg"], "xtick"), ["plain", "P16, 1 KiB"])

    def test_bar_values_are_the_medians(self):
        tp = self.bars("throughput.svg")
        self.assertEqual(len(tp), 12)
        self.assertEqual(float(tp["plain GET", "direct"].get("data-value")), 95000)
        self.assertEqual(float(tp["plain GET", "ferrox"].get("data-value")), 66000)
        self.assertEqual(float(tp["P16, 1 KiB SET", "twemproxy"].get("data-value")), 250000)
        p99 = self.bars("p99.svg")
        self.assertEqual(float(p99["P16, 1 KiB GET", "ferrox"].get("data-value")), 12.0)
        cpu = self.bars("cpu.svg")
        self.assertEqual({s for _, s in cpu}, {"twemproxy", "ferrox"})
        self.assertEqual(float(cpu["plain", "twemproxy"].get("data-value")), 12.0)
        self.assertEqual(float(cpu["plain", "ferrox"].get("data-value")), 9.6)
        self.assertEqual(float(cpu["P16, 1 KiB", "ferrox"].get("data-value")), 1.9)

    def test_bar_heights_follow_the_axis(self):
        for name in ("throughput.svg", "p99.svg", "cpu.svg"):
            root = self.svg[name]
            y = y_of(root)
            top_tick = max(float(g.get("data-value")) for g in marks(root, "line", "grid"))
            bars = marks(root, "rect", "bar")
            tallest = max(bars, key=lambda b: float(b.get("height")))
            per_unit = float(tallest.get("height")) / float(tallest.get("data-value"))
            for bar in bars:
                v, top, h = float(bar.get("data-value")), float(bar.get("y")), float(bar.get("height"))
                with self.subTest(name, bar=bar.get("data-group") + " " + bar.get("data-series")):
                    self.assertAlmostEqual(top + h, y(0), delta=0.02)
                    self.assertAlmostEqual(top, y(v), delta=0.02)
                    self.assertGreaterEqual(top, y(top_tick) - 0.02)
                    # One pixels-per-unit for every bar: heights proportional to values.
                    self.assertAlmostEqual(h, v * per_unit, delta=0.02)

    def test_bars_in_a_group_go_direct_twemproxy_ferrox(self):
        tp = self.bars("throughput.svg")
        xs = [float(tp["plain SET", s].get("x")) for s in ("direct", "twemproxy", "ferrox")]
        self.assertEqual(xs, sorted(xs))
        self.assertEqual(tp["plain SET", "ferrox"].get("fill"), report.COLORS["ferrox"])

    def test_memory_lines(self):
        root = self.svg["memory.svg"]
        lines = {e.get("data-series") for e in marks(root, "polyline", "line")}
        self.assertEqual(lines, {"twemproxy", "ferrox"})
        y = y_of(root)
        points = {(c.get("data-series"), int(c.get("data-x"))): c for c in marks(root, "circle", "point")}
        self.assertEqual(set(points), {(t, n) for t in ("twemproxy", "ferrox") for n in (1000, 5000)})
        self.assertEqual(float(points["ferrox", 5000].get("data-value")), 70.3)
        for (series, n), c in points.items():
            self.assertAlmostEqual(float(c.get("cy")), y(float(c.get("data-value"))), delta=0.02)
        for n in (1000, 5000):
            # ferrox's 70-75 KiB lie above twemproxy's 2-2.5 (smaller y).
            self.assertLess(float(points["ferrox", n].get("cy")), float(points["twemproxy", n].get("cy")))
        self.assertGreater(float(points["ferrox", 5000].get("cx")), float(points["ferrox", 1000].get("cx")))

    def test_markdown_states_machine_and_links_charts(self):
        self.assertTrue(self.md.startswith("# ferrox benchmark report\n\nA fixture, not a measurement.\n"))
        for name in CHARTS:
            self.assertIn(f"]({name})", self.md)
        for fact in ("| date (UTC) | 2026-12-07T09:30Z |", "2 vCPUs", "| kernel | Linux 6.18.44-test |",
                     "| DPDK | 22.11.11 |", "MTU 3438", "net_af_xdp", "(1 lcore)", "nutcracker-0.5.0",
                     "20000 requests per test", "medians of 3 rounds",
                     # 1/100 s over 40,000 requests.
                     "one tick is 0.25 µs per request"):
            self.assertIn(fact, self.md)

    def test_machine_cpu_and_active_rates(self):
        rows = (
            # Medians (lower middle) of 3.10 3.00 3.20, 7.40 7.60 7.20, 8.20 8.00 8.60.
            "| P16, 1 KiB | 3.10 | 7.40 | 8.20 | 5.10 | 4.30 |",
            # The machine was not measured for plain: dashes, not zeros.
            "| plain | – | – | – | – | – |",
            "| twemproxy | 0 | 90,000 | – |",
            "| twemproxy | 5,000 | 81,000 | 0.90× |",
            "| ferrox | 5,000 | 85,800 | 0.97× |",
        )
        for row in rows:
            self.assertIn(row, self.md.splitlines())

    def test_markdown_ratios_are_same_round_medians(self):
        rows = (
            # ferrox/twemproxy rounds 1.10 1.00 1.10; ferrox/direct 0.733 0.64 0.718.
            "| plain | GET | 95,000 | 62,000 | 66,000 | 1.10 (1.10 1.00 1.10) | 0.72 (0.73 0.64 0.72) |",
            "| P16, 1 KiB | SET | 570,000 | 250,000 | 240,000 | 1.00 (1.00 0.90 1.00) | 0.43 (0.43 0.39 0.46) |",
            "| plain | GET | 0.271 / 0.631 / 0.455 | 0.600 / 1.500 / 1.000 | 0.67 (0.67 0.75 0.57) |",
            "| plain | 12.00 | 9.60 | 0.80 (0.75 0.80 0.83) | 4.40 |",
            "| P16, 1 KiB | 3.30 | 1.90 | 0.58 (0.58 0.59 0.50) | 0.99 |",
            "| 1,000 | 2.5 | 75.0 | 30.0 |",
            "| 5,000 | 2.0 | 70.3 | 35.1 |",
        )
        for row in rows:
            self.assertIn(row, self.md.splitlines())


class Edges(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def write(self, text: str) -> str:
        path = os.path.join(self.tmp.name, "results.tsv")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_a_missing_proxy_and_no_memory(self):
        path = self.write(
            "meta\tmtu\t1500\n"
            "request\tplain\tGET\tdirect\t1\t100000\t0.3\t0.6\t-\t-\n"
            "request\tplain\tGET\tferrox\t1\t50000\t0.5\t1.2\t10.00\t4.00\n")
        out = os.path.join(self.tmp.name, "out")
        report.write_report([path], out)
        self.assertFalse(os.path.exists(os.path.join(out, "memory.svg")))
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            md = f.read()
        self.assertIn("| plain | GET | 100,000 | – | 50,000 | – | 0.50 |", md)
        self.assertIn("was not measured", md)
        # Outside the report's folder: named, not linked.
        self.assertIn("results (`results.tsv`)", md)
        root = ET.parse(os.path.join(out, "throughput.svg")).getroot()
        self.assertEqual(texts(root, "legend"), ["direct", "ferrox"])

    def test_get_before_set_whatever_ran_first(self):
        path = self.write(
            "request\tplain\tSET\tferrox\t1\t1\t1\t1\t-\t-\n"
            "request\tplain\tGET\tferrox\t1\t1\t1\t1\t-\t-\n"
            "request\tplain\tINCR\tferrox\t1\t1\t1\t1\t-\t-\n")
        summary = report.Summary(report.parse([path]))
        self.assertEqual(summary.groups, [("plain", "GET"), ("plain", "SET"), ("plain", "INCR")])

    def test_bad_lines_name_file_and_line(self):
        path = self.write("meta\tmtu\t1500\nrequest\tplain\tGET\tferrox\t1\tfast\t0.5\t1.2\t-\t-\n")
        with self.assertRaisesRegex(report.ResultsError, r"results\.tsv:2: not a number"):
            report.parse([path])
        path = self.write("request\tplain\tGET\tnginx\t1\t1\t1\t1\t-\t-\n")
        with self.assertRaisesRegex(report.ResultsError, "unknown target"):
            report.parse([path])
        line = "request\tplain\tGET\tferrox\t1\t1\t1\t1\t-\t-\n"
        with self.assertRaisesRegex(report.ResultsError, "twice"):
            report.parse([self.write(line + line)])
        with self.assertRaisesRegex(report.ResultsError, "no measurements"):
            report.parse([self.write("# nothing\nmeta\tmtu\t1500\n")])

    def test_two_files_are_rounds_of_one_run(self):
        summary = report.Summary(report.parse([FIXTURE, FIXTURE]))
        self.assertEqual(len(summary.runs), 6)
        value, rounds = summary.ratio("plain", "GET", "ferrox", "twemproxy")
        self.assertEqual(len(rounds), 6)
        self.assertAlmostEqual(value, 1.1)

    def test_cli(self):
        out = os.path.join(self.tmp.name, "cli")
        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            self.assertEqual(report.main(["-o", out, FIXTURE]), 0)
        self.assertEqual(said.getvalue().splitlines()[0], os.path.join(out, "report.md"))
        self.assertTrue(os.path.exists(os.path.join(out, "report.md")))
        with contextlib.redirect_stderr(said):
            self.assertEqual(report.main(["-o", out, self.write("nonsense\n")]), 1)
        self.assertIn("results.tsv:1: not a meta", said.getvalue())


class Numbers(unittest.TestCase):
    def test_ticks_cover_the_largest_value_in_round_steps(self):
        self.assertEqual(report.nice_ticks(66000), [0, 20000, 40000, 60000, 80000])
        self.assertEqual(report.nice_ticks(0.6), [0, 0.2, 0.4, 0.6])
        self.assertEqual(report.nice_ticks(0), [0, 0.2, 0.4, 0.6, 0.8, 1.0])
        for top in (0.013, 0.9, 1, 7.3, 12.0, 99.9, 100, 101, 324000, 1.5e6):
            ticks = report.nice_ticks(top)
            self.assertGreaterEqual(ticks[-1], top)
            self.assertTrue(3 <= len(ticks) <= 11, (top, ticks))

    def test_median_of_an_even_count_is_the_lower_middle_as_in_proxy_sh(self):
        self.assertEqual(report.median([3.0, 1.0, 4.0, 2.0]), 2.0)
        self.assertIsNone(report.median([]))

    def test_short_numbers(self):
        self.assertEqual(report.short_number(66000), "66k")
        self.assertEqual(report.short_number(999600), "1M")
        self.assertEqual(report.short_number(1234567), "1.23M")
        self.assertEqual(report.short_number(0.455), "0.455")


if __name__ == "__main__":
    unittest.main()
