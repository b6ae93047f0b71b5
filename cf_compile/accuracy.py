"""Accuracy diff: eager vs ``torch.compile(backend="clusterfusion")``, per output and per fused op.

``compare(model, input_ids)`` answers three questions a user asks before trusting the backend:

1. **Outputs.** Do the compiled decode steps give the eager logits, tokens and KV caches? Every run
   starts from a fresh ``StaticCache``, prefills eagerly and then decodes ``steps`` tokens. All runs are
   fed the tokens eager chose (teacher forcing): each step's logits are then compared on identical
   inputs, so one flipped near-tie token cannot turn every later step into noise. Greedy agreement
   is still exact where it matters: the first step at which the compiled argmax differs is the step at
   which a free-running compiled generation would first diverge.
2. **Calibration.** Is the compiled-vs-eager difference larger than the rounding noise the model's own
   precision already has? The same model upcast to ``reference_dtype`` (fp32) is run too, and the
   verdict applies this rule to the worst per-step relative logit error against fp32::

       inside band  <=>  err(compiled, fp32) <= 1.5 * err(eager, fp32) + 1e-5

   Eager bf16 and a correct compiled bf16 model round at the same points, so their errors against
   fp32 are of the same size (and largely independent); 1.5x leaves room for that step-to-step
   scatter, while a systematic extra loss (e.g. a bf16 accumulator, a dropped epsilon) shows up as a
   multiple. The 1e-5 floor is fp32 re-association noise (Inductor reorders sums): for an fp32 model
   eager *is* the reference, the band is only that floor, and the report says so.
3. **Per fused op.** Which block is responsible? With ``keep_original_graphs(True)`` the backend keeps
   each Dynamo graph before the rewrite, the fused regions (by node name) and the latest call's inputs
   (mutated caches cloned before the call). The original graph is replayed by a recording
   ``fx.Interpreter`` on clones of those inputs; each region is cut out as its own small graph and run,
   as is the fused op (``impl`` as compiled), on identical clones of the recorded operands with the
   *pre-step* caches. The block output and the cache slot the step wrote are compared.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from cf_compile import backend as cf_backend

BAND_FACTOR = 1.5
BAND_FLOOR = 1e-5


# ----------------------------------------------------------------------------------------- metrics
@dataclass
class Metrics:
    """``actual`` against ``expected``: max |a-b|, ||a-b|| / ||b||, cosine similarity (all in fp64)."""

    max_abs: float
    rel: float
    cosine: float

    @classmethod
    def of(cls, actual: torch.Tensor, expected: torch.Tensor) -> Metrics:
        a, b = actual.detach().to(torch.float64).flatten(), expected.detach().to(torch.float64).flatten()
        if a.numel() == 0:
            return cls(0.0, 0.0, 1.0)
        diff = a - b
        norm_b, norm_d = b.norm().item(), diff.norm().item()
        rel = norm_d / norm_b if norm_b > 0 else (0.0 if norm_d == 0 else math.inf)
        if a.norm().item() == 0 and norm_b == 0:
            cosine = 1.0
        else:
            cosine = F.cosine_similarity(a, b, dim=0, eps=1e-300).item()
        return cls(diff.abs().max().item(), rel, cosine)

    @staticmethod
    def worst(rows: Sequence[Metrics]) -> Metrics:
        """Largest errors and smallest cosine over ``rows`` (NaN wins: it must never look good)."""
        def pick(values: list[float], f: Callable) -> float:
            return math.nan if any(math.isnan(v) for v in values) else f(values)

        return Metrics(pick([m.max_abs for m in rows], max), pick([m.rel for m in rows], max),
                       pick([m.cosine for m in rows], min))


@dataclass
class Agreement:
    """Greedy tokens of two runs: fraction identical over steps (and batch rows), first divergent step."""

    fraction: float
    first_divergence: int | None   # 0-based decode step; None when all agree

    @classmethod
    def of(cls, tokens: torch.Tensor, expected: torch.Tensor) -> Agreement:
        same = tokens == expected                               # [steps, batch]
        bad = (~same.all(dim=1)).nonzero()
        return cls(same.float().mean().item(), int(bad[0, 0]) if len(bad) else None)


# -------------------------------------------------------------------------------------- decode runs
@dataclass
class _Run:
    logits: torch.Tensor    # [steps, batch, vocab] fp32: the logits of each decode step
    tokens: torch.Tensor    # [steps, batch]: argmax of each step
    prefill_token: torch.Tensor   # [batch]: argmax of the prefill's last position
    caches: list[tuple[torch.Tensor, torch.Tensor]]   # per layer (keys, values) after the last step


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a HF StaticCache (``layers[i].keys`` in transformers 5)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _decode(model: Any, step: Callable, input_ids: torch.Tensor, steps: int, max_cache_len: int,
            forced: torch.Tensor | None) -> _Run:
    """Eager prefill, then ``steps`` calls of ``step`` on one token each (``forced`` tokens when given).

    ``forced[0]`` is the token the prefill chose, ``forced[i]`` the one decode step i-1 chose.
    """
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    logits, tokens = [], []
    with torch.no_grad():
        out = model(input_ids, past_key_values=cache, use_cache=True)
        token = prefill_token = out.logits[:, -1].argmax(-1)
        for i in range(steps):
            if forced is not None:
                token = forced[i]
            out = step(token[:, None], past_key_values=cache, use_cache=True)
            step_logits = out.logits[:, -1].to(torch.float32, copy=True)   # a CUDA-graph output is reused
            logits.append(step_logits)
            token = step_logits.argmax(-1)
            tokens.append(token)
    return _Run(torch.stack(logits), torch.stack(tokens), prefill_token,
                [(k.clone(), v.clone()) for k, v in cache_tensors(cache)])


def _inputs_of(run: _Run) -> torch.Tensor:
    """The token fed to each decode step of ``run``: the prefill's choice, then each step's choice."""
    return torch.cat([run.prefill_token[None], run.tokens[:-1]])


@dataclass
class PairResult:
    """Run ``name`` against run ``against``: per decode step logits, tokens, caches after the last step."""

    name: str
    against: str
    steps: list[Metrics]
    tokens: Agreement
    kv_max_abs: list[tuple[float, float]]   # per layer (keys, values)

    @property
    def first_step(self) -> Metrics:
        return self.steps[0]

    @property
    def worst(self) -> Metrics:
        return Metrics.worst(self.steps)

    @property
    def kv_worst(self) -> float:
        values = [v for pair in self.kv_max_abs for v in pair]
        return math.nan if any(math.isnan(v) for v in values) else max(values, default=0.0)

    @classmethod
    def of(cls, name: str, against: str, run: _Run, ref: _Run) -> PairResult:
        steps = [Metrics.of(a, b) for a, b in zip(run.logits, ref.logits, strict=True)]
        kv = [(Metrics.of(ka, kb).max_abs, Metrics.of(va, vb).max_abs)
              for (ka, va), (kb, vb) in zip(run.caches, ref.caches, strict=True)]
        return cls(name, against, steps, Agreement.of(run.tokens, ref.tokens), kv)


# ----------------------------------------------------------------------------------- per fused op
@dataclass
class OpResult:
    """One fused op against the eager subgraph it replaced, on one decode step's real operands."""

    graph: int
    layer: int
    block: str
    implementation: str
    output: Metrics
    cache_slot: list[Metrics] = field(default_factory=list)   # keys, values slots written (attention)

    @property
    def worst(self) -> Metrics:
        return Metrics.worst([self.output, *self.cache_slot])


def _clone(value: Any) -> Any:
    """Fresh copies of state tensors; parameters are shared (nothing here writes them, and the weights
    of a large model must not be copied per op)."""
    def one(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter):
            return v.clone()
        return v
    return tree_map(one, value)


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps a copy of the values of the ``wanted`` nodes *when they are produced*
    (later in-place writes to graph inputs must not change what the region saw)."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.wanted and n.op != "placeholder":
            self.values[n.name] = _clone(result)
        return result


def _external_inputs(gm: fx.GraphModule, region: cf_backend.FusedRegion) -> list[fx.Node]:
    """Nodes outside ``region`` that its nodes read, in graph order of first use."""
    seen: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.name not in region.node_names:
            continue
        for arg in node.all_input_nodes:
            if arg.name not in region.node_names:
                seen.setdefault(arg.name, arg)
    return list(seen.values())


def region_module(gm: fx.GraphModule, region: cf_backend.FusedRegion) -> tuple[fx.GraphModule, list[str]]:
    """The eager subgraph a fused op replaced, as its own GraphModule, and the names of its inputs."""
    graph = fx.Graph()
    externals = _external_inputs(gm, region)
    env = {n.name: graph.placeholder(f"in_{i}") for i, n in enumerate(externals)}
    for node in gm.graph.nodes:
        if node.name in region.node_names:
            env[node.name] = graph.node_copy(node, lambda a: env[a.name])
    graph.output(env[region.output_name])
    return fx.GraphModule(gm, graph), [n.name for n in externals]


def _op_refs(op_args: Any) -> set[str]:
    names: set[str] = set()

    def visit(v: Any) -> Any:
        if isinstance(v, cf_backend.NodeRef):
            names.add(v.name)
        return v
    tree_map(visit, op_args)
    return names


def _resolve(op_args: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return tree_map(lambda v: values[v.name] if isinstance(v, cf_backend.NodeRef) else v, op_args)


def _fused_callable(region: cf_backend.FusedRegion) -> Callable:
    """What the compiled graph calls in place of the region: the custom op with the implementation the
    rewrite chose, or, where the reference was inlined for Inductor, that very reference function."""
    from cf_compile.rewrite import FAMILIES, KERNEL, REFERENCE_INLINED

    family = {f.name: f for f in FAMILIES}[region.block]
    if region.record.implementation == REFERENCE_INLINED:
        return family.reference
    impl = "kernel" if region.record.implementation == KERNEL else "reference"
    return lambda **kwargs: family.op(**kwargs, impl=impl)


def op_errors(comp: cf_backend.Compilation) -> list[OpResult]:
    """Each fused op of one compiled graph against its eager subgraph, on that graph's latest inputs.

    Needs a Compilation made with ``keep_original_graphs(True)`` that has been called at least once.
    Nothing the user holds is mutated: every state tensor is cloned before each use.
    """
    gm, regions = comp.original, comp.regions or []
    if gm is None or comp.last_inputs is None:
        raise ValueError("compilation has no original graph or no recorded call: use "
                         "keep_original_graphs(True) before compiling and run the compiled function once")
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    pre_step = dict(zip(placeholders, comp.last_inputs, strict=True))
    subgraphs = [region_module(gm, r) for r in regions]
    wanted = set().union(*(set(names) for _, names in subgraphs), *(_op_refs(r.op_args) for r in regions))
    recorder = _Recorder(gm, wanted)
    with torch.no_grad():
        recorder.run(*_clone(list(comp.last_inputs)))

    def value(name: str) -> Any:
        # graph inputs as they were before the step (the caches the region wrote into), else as recorded
        return _clone(pre_step[name] if name in pre_step else recorder.values[name])

    results = []
    for region, (sub, names) in zip(regions, subgraphs, strict=True):
        with torch.no_grad():
            eager_in = {name: value(name) for name in names}
            eager_out = sub(*(eager_in[name] for name in names))
            fused_in = {name: value(name) for name in _op_refs(region.op_args)}
            args = _resolve(region.op_args, fused_in)
            fused_out = _fused_callable(region)(**args)
        slots = []
        if "k_cache" in region.op_args:
            position = fused_in[region.op_args["cache_position"].name]
            for key in ("k_cache", "v_cache"):
                name = region.op_args[key].name
                slots.append(Metrics.of(fused_in[name].index_select(2, position),
                                        eager_in[name].index_select(2, position)))
        results.append(OpResult(region.record.graph, region.record.layer, region.block,
                                region.record.implementation, Metrics.of(fused_out, eager_out), slots))
    return results


# ---------------------------------------------------------------------------------------- report
@dataclass
class Band:
    """The calibration verdict: is err(compiled, ref) inside eager's own rounding band?"""

    eager_rel: float          # worst per-step relative logit error, eager vs reference
    compiled_rel: float       # the same for compiled vs reference
    limit: float              # BAND_FACTOR * eager_rel + BAND_FLOOR
    inside: bool


def calibration_band(eager_rel: float, compiled_rel: float) -> Band:
    """The module docstring's rule: inside iff compiled_rel <= 1.5 * eager_rel + 1e-5 (NaN is outside)."""
    limit = BAND_FACTOR * eager_rel + BAND_FLOOR
    return Band(eager_rel, compiled_rel, limit, bool(compiled_rel <= limit))


@dataclass
class AccuracyReport:
    model: str
    dtype: str
    reference_dtype: str
    device: str
    batch: int
    prompt_len: int
    steps: int
    max_cache_len: int
    pairs: list[PairResult]
    ops: list[OpResult]
    fused_blocks: int                  # fused records in the compiled graphs (one op row each)
    band: Band | None
    notes: list[str] = field(default_factory=list)

    def pair(self, name: str, against: str) -> PairResult:
        return next(p for p in self.pairs if p.name == name and p.against == against)

    @property
    def compiled_vs_eager(self) -> PairResult:
        return self.pair("compiled", "eager")

    @property
    def worst_op(self) -> OpResult | None:
        return max(self.ops, key=lambda o: (math.isnan(o.worst.rel), o.worst.rel), default=None)

    @property
    def ok(self) -> bool:
        """Inside the band (or, without calibration, compiled tokens identical to eager)."""
        if self.band is not None:
            return self.band.inside
        return self.compiled_vs_eager.tokens.fraction == 1.0

    def verdict(self) -> str:
        ce = self.compiled_vs_eager
        parts = []
        if self.band is not None:
            b = self.band
            word = "inside band" if b.inside else "OUTSIDE band"
            parts.append(f"{word}: compiled vs {self.reference_dtype} rel err {b.compiled_rel:.2e} "
                         f"{'<=' if b.inside else '>'} {BAND_FACTOR}x eager vs {self.reference_dtype} "
                         f"{b.eager_rel:.2e} + {BAND_FLOOR:.0e}")
        else:
            parts.append("no calibration")
        first = "" if ce.tokens.first_divergence is None else f", first divergence at step {ce.tokens.first_divergence}"
        parts.append(f"tokens {ce.tokens.fraction:.0%} identical to eager{first}")
        op = self.worst_op
        if op is not None:
            parts.append(f"worst fused op: layer {op.layer} {op.block} rel err {op.worst.rel:.2e}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict()
        data["ok"] = self.ok
        return _finite(data)

    def render(self, console: Any = None, compact: bool = False) -> None:
        """Rich tables: outputs per pair; per step (unless ``compact``); per fused op; verdict line."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console(width=None if Console().is_terminal else 160)
        title = (f"accuracy: {self.model} {self.dtype} on {self.device}, batch {self.batch}, prompt "
                 f"{self.prompt_len}, {self.steps} decode steps, static cache {self.max_cache_len}")
        table = Table(title=title)
        for col in ("run", "against", "step 0 max abs", "step 0 rel", "step 0 cos", "worst max abs",
                    "worst rel", "min cos", "tokens same", "first diverge", "KV max abs"):
            table.add_column(col, justify="right" if col not in ("run", "against") else "left")
        for p in self.pairs:
            f, w = p.first_step, p.worst
            table.add_row(p.name, p.against, _g(f.max_abs), _g(f.rel), _cos(f.cosine), _g(w.max_abs),
                          _g(w.rel), _cos(w.cosine), f"{p.tokens.fraction:.0%}",
                          "-" if p.tokens.first_divergence is None else str(p.tokens.first_divergence),
                          _g(p.kv_worst))
        console.print(table)
        if not compact:
            self._render_steps(console, Table)
        self._render_ops(console, Table, compact)
        for note in self.notes:
            console.print(f"[dim]note: {note}")
        console.print(f"[{'green' if self.ok else 'red'}]verdict: {self.verdict()}")

    def _render_steps(self, console: Any, Table: Any) -> None:
        ce = self.compiled_vs_eager
        table = Table(title="compiled vs eager, per decode step (teacher-forced on eager's tokens)")
        for col in ("step", "max abs", "rel", "cos"):
            table.add_column(col, justify="right")
        for i, m in enumerate(ce.steps):
            table.add_row(str(i), _g(m.max_abs), _g(m.rel), _cos(m.cosine))
        console.print(table)

    def _render_ops(self, console: Any, Table: Any, compact: bool) -> None:
        if not self.ops:
            return
        if compact:
            op = self.worst_op
            console.print(f"per fused op ({len(self.ops)} ops vs the eager subgraphs they replaced): worst "
                          f"layer {op.layer} {op.block} max abs {_g(op.worst.max_abs)} rel {_g(op.worst.rel)} "
                          f"cos {_cos(op.worst.cosine)}")
            return
        table = Table(title="per fused op vs the eager subgraph it replaced (one decode step, real operands)")
        for col in ("graph", "layer", "block", "impl", "out max abs", "out rel", "out cos", "cache slot max abs"):
            table.add_column(col, justify="left" if col in ("block", "impl") else "right")
        for o in self.ops:
            slot = " / ".join(_g(m.max_abs) for m in o.cache_slot) or "-"
            table.add_row(str(o.graph), str(o.layer), o.block, o.implementation, _g(o.output.max_abs),
                          _g(o.output.rel), _cos(o.output.cosine), slot)
        console.print(table)


def _g(x: float) -> str:
    return "nan" if math.isnan(x) else ("0" if x == 0 else f"{x:.2e}")


def _cos(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6f}"


def _finite(data: Any) -> Any:
    """JSON has no NaN/inf: write them as strings."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    return data


# --------------------------------------------------------------------------------------- compare
def default_cache_len(prompt_len: int, steps: int) -> int:
    """Room for the prompt and every decode step, rounded up to 16."""
    return -(-(prompt_len + steps + 1) // 16) * 16


def compare(model: Any, input_ids: torch.Tensor, *, steps: int = 16, max_cache_len: int | None = None,
            options: dict[str, Any] | None = None, reference_dtype: torch.dtype = torch.float32,
            calibrate: bool = True, fresh_compile: bool = True, name: str | None = None) -> AccuracyReport:
    """Eager vs ``torch.compile(model.forward, backend="clusterfusion", options=options)``.

    ``calibrate`` adds the runs of a deep copy of the model in ``reference_dtype`` (skipped, and equal
    to eager, when the model already is in that dtype). ``fresh_compile`` calls
    ``torch._dynamo.reset()`` first: Dynamo would otherwise reuse graphs compiled before this call (so
    no original graph is kept), and after a few compares hit its recompile limit and silently run
    eager. The user's compiled functions recompile on their next call.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, prompt_len], got shape {tuple(input_ids.shape)}")
    batch, prompt_len = input_ids.shape
    max_cache_len = max_cache_len or default_cache_len(prompt_len, steps)
    if max_cache_len < prompt_len + steps:
        raise ValueError(f"max_cache_len {max_cache_len} < prompt {prompt_len} + steps {steps}")
    dtype = next(model.parameters()).dtype
    notes: list[str] = []

    eager = _decode(model, model.forward, input_ids, steps, max_cache_len, forced=None)
    forced = _inputs_of(eager)

    reference = None
    if calibrate:
        if dtype == reference_dtype:
            reference = eager
            notes.append(f"the model is {_dt(dtype)}: eager is the reference, so the band is only the "
                         f"{BAND_FLOOR:.0e} re-association floor")
        else:
            ref_model = copy.deepcopy(model).to(reference_dtype)
            reference = _decode(ref_model, ref_model.forward, input_ids, steps, max_cache_len, forced)
            del ref_model

    compiled, ops, fused = _compiled_run(model, input_ids, steps, max_cache_len, forced, options,
                                         fresh_compile, notes)

    pairs = [PairResult.of("compiled", "eager", compiled, eager)]
    band = None
    if reference is not None:
        ref_name = _dt(reference_dtype)
        ev = PairResult.of("eager", ref_name, eager, reference)
        cv = PairResult.of("compiled", ref_name, compiled, reference)
        pairs += [ev, cv]
        band = calibration_band(ev.worst.rel, cv.worst.rel)
    return AccuracyReport(model=name or type(model).__name__, dtype=_dt(dtype), reference_dtype=_dt(reference_dtype),
                          device=str(input_ids.device), batch=batch, prompt_len=prompt_len, steps=steps,
                          max_cache_len=max_cache_len, pairs=pairs, ops=ops, fused_blocks=fused, band=band,
                          notes=notes)


def _compiled_run(model: Any, input_ids: torch.Tensor, steps: int, max_cache_len: int, forced: torch.Tensor,
                  options: dict[str, Any] | None, fresh_compile: bool,
                  notes: list[str]) -> tuple[_Run, list[OpResult], int]:
    """The compiled decode run, then the per-op errors of the graphs it compiled (latest step's inputs)."""
    if fresh_compile:
        torch._dynamo.reset()
    ensure_backend()
    keep_before = cf_backend.keep_original_graphs(True)
    first = len(cf_backend.compilations())
    try:
        step = torch.compile(model.forward, backend="clusterfusion", options=options or {})
        run = _decode(model, step, input_ids, steps, max_cache_len, forced)
    finally:
        cf_backend.keep_original_graphs(keep_before)
    new = cf_backend.compilations()[first:]
    if not new:
        notes.append("no graph was compiled during this call (Dynamo reused earlier graphs): no per-op errors; "
                     "use fresh_compile=True")
    ops: list[OpResult] = []
    fused = 0
    for comp in new:
        fused += len(comp.report.fused())
        if comp.regions and comp.last_inputs is not None:
            ops += op_errors(comp)
    ops.sort(key=lambda o: (o.graph, o.layer, o.block))
    if new and fused == 0:
        notes.append("no block was fused in the compiled graphs: see `python -m cf_compile report`")
    return run, ops, fused


def ensure_backend() -> None:
    """Make ``backend="clusterfusion"`` resolvable even where the package is not pip-installed
    (no entry point): ``register()`` is idempotent and defers to a pending entry point."""
    cf_backend.register()


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
