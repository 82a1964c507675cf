#!/usr/bin/env python3
"""Merges the markdown tables of several runs of one benchmark into one table of medians.

`median_tables.py rep1.md rep2.md rep3.md` prints every `## section` with its table; a row is
keyed by its leading non-numeric cells (e.g. "| 100 | same-node | closed |" -> the first cells
that are not measurements), and each numeric cell is the median over the runs (with the
min-max range when the runs disagree), so noisy boxes show their spread instead of hiding it.
"""
import re
import statistics
import sys

NUM = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(%|ms|s|KiB|MiB)?\s*$")


def tables(path):
    section, header, rows = None, None, []
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            out.setdefault(section, {"header": header, "rows": {}, "order": []})
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        t = out[section]
        # The row's identity: the header's first column plus every non-numeric cell before the
        # first measurement after it.
        # Columns headed "offered ..." (an open-loop rate) name the row too: rows at 20k and at
        # 50k offered are different rows, not runs of one.
        key = [cells[0]]
        for i, c in enumerate(cells[1:], start=1):
            offered = i < len(header) and header[i].startswith("offered")
            if NUM.match(c) and not offered:
                break
            key.append(c)
        key = tuple(key)
        if key not in t["rows"]:
            t["order"].append(key)
        t["rows"].setdefault(key, []).append(cells)
    return out


def merge(paths):
    merged = {}
    order = []
    for p in paths:
        for section, t in tables(p).items():
            if section not in merged:
                merged[section] = {"header": t["header"], "rows": {}, "order": []}
                order.append(section)
            m = merged[section]
            for key in t["order"]:
                if key not in m["rows"]:
                    m["order"].append(key)
                m["rows"].setdefault(key, []).extend(t["rows"][key])
    for section in order:
        m = merged[section]
        print(f"\n## {section} (median of {len(paths)} runs; min-max in brackets)\n")
        print("| " + " | ".join(m["header"]) + " |")
        print("|" + "|".join(" --- " for _ in m["header"]) + "|")
        for key in m["order"]:
            runs = m["rows"][key]
            cells = []
            for i in range(len(runs[0])):
                vals = [r[i] for r in runs if i < len(r)]
                nums = [NUM.match(v) for v in vals]
                if key and i < len(key) or not all(nums):
                    cells.append(vals[0])
                    continue
                xs = [float(n.group(1)) for n in nums]
                unit = nums[0].group(2) or ""
                med = statistics.median(xs)
                fmt = (lambda x: f"{x:.0f}") if all(x == int(x) for x in xs) and abs(med) >= 100 else (lambda x: f"{x:.2f}")
                cell = f"{fmt(med)}{(' ' + unit) if unit else ''}"
                if len(xs) > 1 and min(xs) != max(xs):
                    cell += f" [{fmt(min(xs))}-{fmt(max(xs))}]"
                cells.append(cell)
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: median_tables.py RUN.md [RUN.md ...]")
    merge(sys.argv[1:])
