"""The pass: find blocks in a Dynamo graph, choose an implementation for each, rewrite, report.

Order (one list, here): MLA blocks (DeepSeek), attention blocks, then gated FFNs. An anchor that an
earlier family recorded (fused or near-miss) is not offered to later ones: MLA's SDPA is MLA's.
Each family's matcher only reads the graph; all edits happen after all have run, so one block's
rewrite cannot hide another's match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx

from cf_compile import policy
from cf_compile.fx.edit import replace_region
from cf_compile.fx.walk import module_path, val
from cf_compile.ops import attention as attention_op
from cf_compile.ops import ffn as ffn_op
from cf_compile.ops import mla as mla_op
from cf_compile.ops import shared as _shared_op  # noqa: F401  (registers clusterfusion::shared_input)
from cf_compile.options import Options
from cf_compile.patterns import attention as attention_pattern
from cf_compile.patterns import ffn as ffn_pattern
from cf_compile.patterns import mla as mla_pattern
from cf_compile.patterns.common import BlockMatch, NearMiss
from cf_compile.report import FUSED, BlockRecord, GraphReport

log = logging.getLogger("cf_compile")


class ClusterFusionError(RuntimeError):
    """Raised with ``strict=True`` when a block candidate cannot be fused."""


@dataclass(frozen=True)
class Family:
    name: str
    anchors: Callable[[fx.Graph], list[fx.Node]]
    match: Callable[[fx.Node], BlockMatch | NearMiss | None]
    op: Callable
    reference: Callable
    # (match, SM count) -> (why the kernel declines or None, kernel config); None: no kernel exists
    kernel_support: Callable[[BlockMatch, int], tuple[str | None, dict]] | None
    # On a GPU, where the kernel is not used, leave the block's own nodes to Inductor instead of inlining the
    # reference: the reference computes what eager's code computes, and Inductor fuses eager's code with its
    # neighbours better (Llama-3-8B, prompt 3584, H100: FFN reference inlined 7354 us per step vs left as is
    # 7141). MLA keeps its reference: eager's code re-expands the whole latent cache every step.
    original_to_inductor: bool = False
    # (match, config) -> the config of the launch itself, asked only once the kernel is chosen (it may build the
    # kernel: the attention split comes from the driver's count of co-resident clusters, not the SM estimate)
    launch_config: Callable[[BlockMatch, dict], dict] | None = None

REFERENCE_INLINED = "reference (inlined)"
INDUCTOR_ORIGINAL = "Inductor (block as traced)"
REFERENCE_OP = "reference (op)"
KERNEL = "kernel"


def _device_of(m: BlockMatch) -> torch.device:
    v = val(m.op_args["x"])
    return v.device if isinstance(v, torch.Tensor) else torch.device("cpu")


def _cache_len(m: BlockMatch) -> int | None:
    """The static cache's length (max_cache_len; a symbolic one by its hint: the kernels read it at run time),
    or None for a block without a cache."""
    cache = m.op_args.get("k_cache")
    if cache is None or not isinstance(val(cache), torch.Tensor):
        return None
    length = val(cache).shape[2]
    return length.node.hint if isinstance(length, torch.SymInt) else int(length)


def choose_implementation(m: BlockMatch, options: Options) -> tuple[str, str, dict]:
    """(implementation, reason the kernel is not used or "", kernel config for the report)."""
    impl, why, config = _implementation(m, options)
    if impl == REFERENCE_INLINED and family_of(m.block).original_to_inductor and _device_of(m).type == "cuda":
        return INDUCTOR_ORIGINAL, why, config
    return impl, why, config


def _implementation(m: BlockMatch, options: Options) -> tuple[str, str, dict]:
    if options.kernels == "reference":
        return REFERENCE_OP, "kernels='reference' requested", {}
    support = family_of(m.block).kernel_support
    if support is None:   # the op's impl="kernel" raises until a kernel exists
        return REFERENCE_INLINED, f"no {m.block.upper()} kernel yet", {}
    try:
        import cf_compile_kernels
        ok, why = cf_compile_kernels.kernels_available(_device_of(m))
    except Exception as e:  # a broken kernel package must never break compilation
        ok, why = False, f"kernel package unavailable: {e}"
    if not ok:
        return REFERENCE_INLINED, why, {}
    try:
        num_sms = torch.cuda.get_device_properties(_device_of(m)).multi_processor_count
        reason, config = support(m, num_sms)
    except Exception as e:
        reason, config = f"kernel support check failed: {e}", {}
    if reason:
        return REFERENCE_INLINED, reason, {}
    if options.kernels == "auto":   # only where a benchmark measured it faster (cf_compile/policy.py)
        faster, evidence = policy.verdict(m.block, m.shapes, m.dtype.itemsize, m.batch,
                                          torch.cuda.get_device_name(_device_of(m)), cached=_cache_len(m))
        if not faster:
            return REFERENCE_INLINED, evidence, config
        config = {**config, "evidence": evidence}
    launch_config = family_of(m.block).launch_config
    if launch_config is not None:
        try:
            config = launch_config(m, config)
        except Exception as e:  # the launch would fail the same way: say so now and leave the block alone
            return REFERENCE_INLINED, f"kernel launch plan failed: {e}", {}
    return KERNEL, "", config


def _ffn_kernel_support(m: BlockMatch, num_sms: int) -> tuple[str | None, dict]:
    from cf_compile_kernels import ffn as k

    s, f = m.shapes, m.features
    reason = k.ffn_unsupported_reason(hidden=s["hidden"], intermediate=s["intermediate"], batch=m.batch,
                                      dtype=m.dtype, activation=f["activation"], norm_kind=f["norm"],
                                      fused_gate_up=f["fused_gate_up"], has_bias=f["bias"])
    if reason:
        return reason, {}
    return None, k.ffn_config(hidden=s["hidden"], intermediate=s["intermediate"], batch=m.batch, dtype=m.dtype,
                              num_sms=num_sms)


def _attention_kernel_support(m: BlockMatch, num_sms: int) -> tuple[str | None, dict]:
    from cf_compile_kernels import attention as k

    f = m.features
    if f["qk_norm"] and f["qk_norm_kind"] != "weight":
        return f"no kernel for a per-head {f['qk_norm_kind']} q/k norm (Gemma3's 1 + w)", {}
    shape = dict(_attention_shape(m), dtype=m.dtype, num_sms=num_sms)
    reason = k.attention_unsupported_reason(**shape, max_cache_len=_cache_len(m), has_qk_norm=f["qk_norm"],
                                            mask_dtype=val(m.op_args["attn_mask"]).dtype)
    if reason:
        return reason, {}
    return None, k.attention_config(**shape, has_qk_norm=f["qk_norm"])


def _attention_shape(m: BlockMatch) -> dict[str, int]:
    """The attention kernels' shape arguments of a matched block."""
    s = m.shapes
    return dict(hidden=s["hidden"], num_heads=s["heads"], num_kv_heads=s["kv_heads"], head_dim=s["head_dim"],
                batch=m.batch)


def _attention_launch_config(m: BlockMatch, config: dict) -> dict:
    """The split the launcher will use (device_plan: from the driver's co-resident cluster counts; round 17 found
    the SM-count estimate reported C4/P8 where C2/P8 ran), kept beside the policy's evidence. device_plan, not
    the launcher's memoised launch: that one allocates its scratch, which must not happen while compiling."""
    from cf_compile_kernels import attention as k

    if config.get("kernel") == "flow":  # the claimed-tile kernel: no clusters, its tile cut is the config
        return config
    device = _device_of(m)
    index = device.index if device.index is not None else torch.cuda.current_device()
    shape = _attention_shape(m)
    plan = k.device_plan(m.dtype, **shape, device_index=index)
    return {**config, **plan.as_dict(), "variant": k.DEFAULT_VARIANT,
            "phase4": k.phase4_loop(plan, k.DEFAULT_VARIANT, shape["head_dim"])}


def _mla_kernel_support(m: BlockMatch, num_sms: int) -> tuple[str | None, dict]:
    from cf_compile_kernels import mla as k

    s, f = m.shapes, m.features
    cache_len = _cache_len(m)
    mask = m.op_args["attn_mask"]
    reason = k.mla_unsupported_reason(
        hidden=s["hidden"], num_heads=s["heads"], q_lora_rank=s["q_lora_rank"], kv_lora_rank=s["kv_lora_rank"],
        qk_nope_head_dim=s["qk_nope_head_dim"], qk_rope_head_dim=s["qk_rope_head_dim"],
        v_head_dim=s["v_head_dim"], batch=m.batch, dtype=m.dtype, max_cache_len=cache_len, rope_form=f["rope"],
        norm_kind=f["norm"], has_bias=f["bias"], mask_dtype=None if mask is None else val(mask).dtype)
    if reason:
        return reason, {}
    return None, k.mla_config(num_heads=s["heads"], qk_nope_head_dim=s["qk_nope_head_dim"],
                              v_head_dim=s["v_head_dim"], q_lora_rank=s["q_lora_rank"], batch=m.batch,
                              num_sms=num_sms)


FAMILIES = (
    Family("mla", mla_pattern.anchors, mla_pattern.match, mla_op.mla_decode_call, mla_op.mla_decode_reference,
           kernel_support=_mla_kernel_support),
    Family("attention", attention_pattern.anchors, attention_pattern.match,
           torch.ops.clusterfusion.attention_decode.default, attention_op.attention_decode_reference,
           kernel_support=_attention_kernel_support, original_to_inductor=True,
           launch_config=_attention_launch_config),
    Family("ffn", ffn_pattern.anchors, ffn_pattern.match, torch.ops.clusterfusion.gated_ffn.default,
           ffn_op.gated_ffn_reference, kernel_support=_ffn_kernel_support, original_to_inductor=True),
)


def family_of(block: str) -> Family:
    return next(f for f in FAMILIES if f.name == block)


def _record(rep: GraphReport, layer: int, result: BlockMatch | NearMiss) -> BlockRecord:
    rec = BlockRecord(graph=rep.graph, layer=layer, block=result.block, status=result.status if
                      isinstance(result, NearMiss) else FUSED, module=module_path(result.anchor),
                      shapes=dict(result.shapes), dtype=str(result.dtype or "").replace("torch.", ""),
                      batch=result.batch)
    if isinstance(result, NearMiss):
        rec.reason = result.reason
    else:
        rec.features = dict(result.features)
    rep.records.append(rec)
    return rec


def rewrite(gm: fx.GraphModule, options: Options, report: GraphReport) -> list[tuple[BlockMatch, BlockRecord]]:
    """Match every enabled family, rewrite the proven blocks, fill ``report``; returns the matches."""
    results: list[tuple[Family, BlockMatch | NearMiss, BlockRecord]] = []
    recorded: set[fx.Node] = set()
    for family in FAMILIES:
        if family.name not in options.patterns:
            continue
        layer = 0
        for anchor in family.anchors(gm.graph):
            if anchor in recorded:
                continue
            try:
                result = family.match(anchor)
            except Exception as e:  # a matcher bug must never break compilation: leave the block alone
                log.warning("clusterfusion: %s matcher failed on %s: %r", family.name, anchor.name, e)
                result = NearMiss(family.name, anchor, f"matcher error: {type(e).__name__}: {e}")
            if result is None:
                continue
            recorded.add(anchor)
            results.append((family, result, _record(report, layer, result)))
            layer += 1
    if options.strict:
        misses = [(r, rec) for _, r, rec in results if isinstance(r, NearMiss) and r.status != "skipped"]
        if misses:
            r, rec = misses[0]
            raise ClusterFusionError(f"clusterfusion (strict): {rec.block} block of layer {rec.layer}"
                                     f"{' (' + rec.module + ')' if rec.module else ''} not fused: {r.reason}")
    # Two matches may not claim the same node (e.g. a residual add claimed twice): first wins.
    claimed: set[fx.Node] = set()
    replaced: dict[fx.Node, fx.Node] = {}
    done = []
    for family, result, rec in results:
        if not isinstance(result, BlockMatch):
            continue
        if result.nodes & claimed:
            rec.status, rec.reason = "near-miss", "overlaps a block fused earlier"
            continue
        claimed |= result.nodes
        impl, why, config = choose_implementation(result, options)
        rec.implementation, rec.kernel_config = impl, config
        if why and impl != REFERENCE_OP:
            rec.reason = why
        # an earlier rewrite may have replaced one of our operands (the residual stream x)
        if impl == INDUCTOR_ORIGINAL:   # proven, reported, left as traced
            continue
        op_args = fx.node.map_arg(result.op_args, lambda n: replaced.get(n, n))
        if impl == REFERENCE_INLINED:
            new = replace_region(gm.graph, result.nodes, result.output, family.reference, op_args)
        else:
            op_args = dict(op_args, impl="kernel" if impl == KERNEL else "reference")
            new = replace_region(gm.graph, result.nodes, result.output, family.op, op_args)
        replaced[result.output] = new
        done.append((result, rec))
    if done:
        share_tables(gm.graph)
        gm.graph.lint()
        gm.recompile()
    return done


# Per-step inputs every layer's fused op reads (the RoPE tables, the mask, the cache position).
SHARED_TABLE_ARGS = ("cos", "sin", "attn_mask", "cache_position")
_FUSED_OPS = (torch.ops.clusterfusion.attention_decode.default, mla_op.mla_decode_call)


def share_tables(graph: fx.Graph) -> int:
    """Route each computed table that several fused ops read through one ``shared_input`` call
    (cf_compile/ops/shared.py says why); returns how many tables were shared."""
    uses: dict[fx.Node, list[tuple[fx.Node, str]]] = {}
    for n in graph.nodes:
        if n.op != "call_function" or n.target not in _FUSED_OPS:
            continue
        for key in SHARED_TABLE_ARGS:
            t = n.kwargs.get(key)
            if isinstance(t, fx.Node) and t.op != "placeholder":
                uses.setdefault(t, []).append((n, key))
    shared_count = 0
    for table, readers in uses.items():
        if len(readers) < 2:
            continue
        with graph.inserting_after(table):
            shared = graph.call_function(torch.ops.clusterfusion.shared_input.default, (table,))
        shared.meta.update({k: v for k, v in table.meta.items() if k in ("example_value", "val")})
        for n, key in readers:
            n.update_kwarg(key, shared)
        shared_count += 1
    return shared_count
