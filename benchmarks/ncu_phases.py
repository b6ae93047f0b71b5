"""Nsight Compute stall samples per kernel phase: an ncu source CSV (``--page source --print-source sass``)
joined to the line table of the same cubin, grouped by the kernel's ``// ---- N.`` phase markers.

    # on the device: benchmarks/device/attn_ncu.sh (builds with CF_NVRTC_EXTRA_OPTIONS=-lineinfo)
    # here: the same instantiation with the device's NVRTC (13.0) and -lineinfo, then nvdisasm -gi
    python benchmarks/ncu_phases.py --csv qwen.sass.csv --sass attn_1_8.sassi \\
        --source cf_compile_kernels/csrc/attention_decode.cu --body attention_decode_body

The SASS offsets of the two must agree (same NVRTC, options and template arguments); the script checks the
opcodes of every sampled instruction. Per phase: static instructions, those executed at least once (the code
a CTA fetches), warp-level instructions executed, stall samples and their top reasons.
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
from pathlib import Path

_LINE = re.compile(r"line (\d+)")
_INSN = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def phase_starts(source: Path, body: str) -> tuple[list[tuple[int, str]], int, int]:
    """(first line, name) of the prologue and every ``// ---- N.`` marker inside ``body``, and the body's range."""
    lines = source.read_text().splitlines()
    start = next(i for i, t in enumerate(lines, 1) if re.search(rf"\b{body}\s*\(", t) and "{" in t)
    end = next((i for i, t in enumerate(lines, 1) if i > start and t.startswith("}")), len(lines))
    phases = [(start, "prologue")]
    for i, t in enumerate(lines[start:end], start + 1):
        m = re.match(r"\s*// ---- (\d+)\.\s*(.*)", t)
        if m:
            phases.append((i, f"{m.group(1)} {m.group(2)[:28]}"))
    return phases, start, end


def line_table(sass: Path, lo: int, hi: int) -> dict[int, tuple[int, str]]:
    """SASS offset -> (the body line it is inlined at, opcode), from ``nvdisasm -gi`` output."""
    table, pending, last = {}, [], 0
    for text in sass.read_text().splitlines():
        if "//##" in text:
            pending += [int(x) for x in _LINE.findall(text)]
            continue
        m = _INSN.match(text)
        if m:
            if pending:
                body = [n for n in pending if lo <= n <= hi]
                last, pending = (body[0] if body else 0), []
            op = m.group(2).split()
            op = [w for w in op if not w.startswith("@")]
            table[int(m.group(1), 16)] = (last, op[0] if op else "")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--sass", type=Path, required=True, help="nvdisasm -gi -c output of the same cubin")
    ap.add_argument("--source", type=Path, default=Path("cf_compile_kernels/csrc/attention_decode.cu"))
    ap.add_argument("--body", default="attention_decode_body")
    args = ap.parse_args()
    phases, lo, hi = phase_starts(args.source, args.body)
    table = line_table(args.sass, lo, hi)
    rows = list(csv.reader(args.csv.open()))
    hdr, data = rows[1], rows[2:]
    col = {h: i for i, h in enumerate(hdr)}
    base = min(int(r[col["Address"]], 16) for r in data)
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    agg: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    mismatched = 0
    for r in data:
        line, op = table.get(int(r[col["Address"]], 16) - base, (0, ""))
        if op and op.split(".")[0] not in r[col["Source"]]:
            mismatched += 1
        name = "outside the body"
        for first, label in phases:
            if lo <= line and line >= first:
                name = label
        executed = int(r[col["Instructions Executed"]] or 0)
        a = agg[name]
        a["static"] += 1
        a["ran"] += executed > 0
        a["executed"] += executed
        for h in reasons:
            v = r[col[h]]
            if v and v.isdigit():
                a[h[6:]] += int(v)
                a["samples"] += int(v)
    total = sum(a["samples"] for a in agg.values()) or 1
    print(f"{len(data)} SASS instructions, {mismatched} opcode mismatches between the CSV and the line table")
    print(f"{'phase':34s} {'static':>6s} {'ran':>5s} {'warp-insts':>10s} {'samples':>7s}   top stall reasons")
    for name in [label for _, label in phases] + ["outside the body"]:
        a = agg.get(name)
        if not a:
            continue
        keys = ("static", "ran", "executed", "samples")
        top = ", ".join(f"{k} {v}" for k, v in a.most_common() if k not in keys and v)[:70]
        print(f"{name:34s} {a['static']:6d} {a['ran']:5d} {a['executed']:10d} {a['samples']:7d} "
              f"{100 * a['samples'] / total:4.1f}%  {top}")


if __name__ == "__main__":
    main()
