"""``kernels="auto"``: run a fused kernel only where a benchmark measured it faster than Inductor.

A fused kernel is not faster everywhere (a launch-bound small block may lose to Inductor's two GEMVs, a
wide one may win), and no cost model predicts that reliably yet. So the decision is evidence: the table
``measured.json`` beside this file holds, per block family, device, block shape, element width and batch,
our default kernel's latest time and Inductor's best (``max-autotune-no-cudagraphs`` in a CUDA graph), each
timed beside the other (``benchmarks/{attention,ffn,mla}.py``; ``benchmarks/policy_table.py`` rebuilds the
table from ``benchmarks/results.jsonl``). The kernel runs when every measured row of its shape at the nearest
measured batch (and every cached length measured there) was faster; a shape or device never measured
runs Inductor and the report says so. ``kernels="all"`` runs the kernels regardless.

Two scopes of evidence. A *block* row times the fused block alone against Inductor compiling the same block
alone. A *step* row times a whole decode step (``benchmarks/e2e.py --kernels-all``) with the kernel on every
block of its family against the same step without it, so Inductor's side is the code it really generates for
that block among its neighbours (it fuses across the block's edges, which the block benchmark cannot show:
Llama-3-8B's attention wins 63.0 vs 64.1 us alone at batch 1 and loses the step, 7140 vs 6508 us, H100
2026-11-23). Where a step row exists at the shape and nearest batch, it decides; block rows decide elsewhere.
Step rows carry the prompt length they decoded after, and the context changes the answer (Llama-3-8B's
attention loses the step after a 512-token prompt and wins it after 3584, 6765 vs 7722 us, H100 2026-11-24):
the row measured nearest the static cache's length speaks for the model being compiled.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("measured.json")
# The block-shape fields that name a measured row, per block family (BlockMatch.shapes keys).
SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "attention": ("hidden", "heads", "kv_heads", "head_dim"),
    "ffn": ("hidden", "intermediate"),
    "mla": ("hidden", "heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
}


@dataclass(frozen=True)
class Measured:
    """One table row: our kernel's latest time and Inductor's best on the same block shape."""

    block: str
    device: str
    shape: tuple[tuple[str, int], ...]
    element_bytes: int
    batch: int
    seq: int
    ours_us: float
    inductor_us: float
    date: str
    scope: str = "block"   # "block": the block alone; "step": a decode step with vs without the kernel

    def describe(self) -> str:
        context = "prompt" if self.scope == "step" else "cached"
        cached = f", {self.seq} {context}" if self.seq else ""
        what = "decode step with vs without the kernel" if self.scope == "step" else "block"
        return f"{what} B={self.batch}{cached}: {self.ours_us:.1f} vs {self.inductor_us:.1f} us"


def shape_key(block: str, shapes: dict) -> tuple[tuple[str, int], ...]:
    return tuple((k, int(shapes[k])) for k in SHAPE_KEYS[block])


@functools.cache
def load(path: Path = TABLE) -> tuple[Measured, ...]:
    if not path.exists():
        return ()
    rows = json.loads(path.read_text())
    return tuple(Measured(block=r["block"], device=r["device"], shape=shape_key(r["block"], r["shape"]),
                          element_bytes=r["element_bytes"], batch=r["batch"], seq=r.get("seq", 0),
                          ours_us=r["ours_us"], inductor_us=r["inductor_us"], date=r["date"],
                          scope=r.get("scope", "block")) for r in rows)


def _same_device(measured: str, device: str) -> bool:
    """Benchmarks name the device as torch does, plus its SM count in parentheses."""
    return measured.split(" (")[0] == device.split(" (")[0]


def _nearest_context(rows: list[Measured], cached: int | None) -> list[Measured]:
    """The step rows measured at the context nearest ``cached`` (by ratio); all of them when the context is
    unknown or a row does not name its own (seq 0)."""
    contexts = {r.seq for r in rows}
    if cached is None or cached <= 0 or 0 in contexts:
        return rows
    nearest = min(contexts, key=lambda s: (abs(math.log2(s / cached)), s))
    return [r for r in rows if r.seq == nearest]


# A measured batch speaks for batches within this factor of it (the FFN's verdict flips between batch 1 and 4,
# the attention kernel's between 1 and 16 at some shapes): beyond it the block is unmeasured, so Inductor's.
MAX_BATCH_RATIO = 2


def verdict(block: str, shapes: dict, element_bytes: int, batch: int, device: str,
            table: tuple[Measured, ...] | None = None, cached: int | None = None) -> tuple[bool, str]:
    """(use the kernel, why): faster than Inductor on every measured row of this block shape and element
    width on this device, at the measured batch nearest ``batch`` (by ratio, within MAX_BATCH_RATIO); no such
    row: Inductor.
    ``cached``: the static cache's length, which bounds the context the step decodes at; step rows measured
    at several contexts then speak only at the one nearest it (by ratio). Unknown: every context must win."""
    rows = load() if table is None else table
    key = shape_key(block, shapes)
    mine = [r for r in rows if r.block == block and r.shape == key and r.element_bytes == element_bytes
            and _same_device(r.device, device)]
    if not mine:
        return False, (f"{block} kernel not benchmarked against Inductor at this shape on {device.split(' (')[0]}; "
                       "kernels='all' runs it")
    near = {r.batch for r in mine if abs(math.log2(r.batch / batch)) <= math.log2(MAX_BATCH_RATIO)}
    if not near:
        measured = ", ".join(str(b) for b in sorted({r.batch for r in mine}))
        return False, (f"{block} kernel measured against Inductor at batch {measured} only, none within "
                       f"{MAX_BATCH_RATIO}x of {batch}; kernels='all' runs it")
    nearest = min(near, key=lambda b: (abs(math.log2(b / batch)), -b))
    at = sorted((r for r in mine if r.batch == nearest), key=lambda r: r.seq)
    if any(r.scope == "step" for r in at):   # the block among its real neighbours decides
        at = [r for r in at if r.scope == "step"]
        at = _nearest_context(at, cached)
    evidence = "; ".join(r.describe() for r in at)
    if all(r.ours_us < r.inductor_us for r in at):
        return True, f"measured faster than Inductor ({at[0].date}, {evidence})"
    return False, f"{block} kernel measured slower than Inductor ({at[0].date}, {evidence}); kernels='all' runs it anyway"
