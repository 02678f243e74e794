"""Medians over runs of the peers' RESULT files (results/LABEL-i.json, with the /usr/bin/time -v
report in LABEL-i.time), one Markdown row per label.

    python summarize.py results/*.json
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def _time_v(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if not path.exists():
        return out
    text = path.read_text()
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["wall"] = secs
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["maxrss_mib"] = int(m.group(1)) / 1024
    return out


def main(paths: list[str]) -> None:
    rows: dict[str, list[dict]] = defaultdict(list)
    for p in map(Path, paths):
        text = p.read_text().strip()
        if not text:
            print(f"{p}: no RESULT (see {p.with_suffix('.log')})", file=sys.stderr)
            continue
        r = json.loads(text.splitlines()[-1])
        r.update(_time_v(p.with_suffix(".time")))
        rows[p.name.rsplit("-", 1)[0]].append(r)
    print("| run | n | process wall s | loop s | rounds/s | clients/s | peak MiB "
          "(largest process) | peak MiB (all processes) | test accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rs in sorted(rows.items()):
        def med(key: str, rs: list[dict] = rs) -> float:
            vals = [r[key] for r in rs if key in r]
            return statistics.median(vals) if vals else float("nan")

        print(f"| {label} | {len(rs)} | {med('wall'):.1f} | {med('loop_seconds'):.2f} | "
              f"{med('rounds_per_s'):.2f} | {med('clients_per_s'):.0f} | "
              f"{med('maxrss_mib'):.0f} | {med('peak_pss_mib_tree'):.0f} | "
              f"{med('final_test_accuracy'):.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
