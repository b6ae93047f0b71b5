"""kernels="auto" runs a fused kernel only where a benchmark measured it faster than Inductor."""

from __future__ import annotations

from cf_compile import policy

H100 = "NVIDIA H100 80GB HBM3"
LLAMA3_ATTN = dict(hidden=4096, heads=32, kv_heads=8, head_dim=128)


def row(batch=1, seq=1024, ours=60.0, inductor=65.0, device=H100 + " (132 SMs)", shape=LLAMA3_ATTN, nbytes=2):
    return policy.Measured(block="attention", device=device, shape=policy.shape_key("attention", shape),
                           element_bytes=nbytes, batch=batch, seq=seq, ours_us=ours, inductor_us=inductor,
                           date="2026-11-23")


def test_faster_on_every_measured_cached_length_runs_the_kernel_with_the_evidence():
    use, why = policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, (row(seq=1024), row(seq=4096, ours=80, inductor=90)))
    assert use and why.startswith("measured faster than Inductor") and "60.0 vs 65.0" in why


def test_slower_at_any_measured_cached_length_leaves_the_block_to_inductor():
    use, why = policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, (row(seq=1024), row(seq=4096, ours=95, inductor=90)))
    assert not use and "slower than Inductor" in why and "kernels='all'" in why


def test_the_nearest_measured_batch_decides():
    table = (row(batch=1, ours=50), row(batch=16, ours=300, inductor=200))
    assert policy.verdict("attention", LLAMA3_ATTN, 2, 2, H100, table)[0]        # 2 is nearer 1 than 16
    assert not policy.verdict("attention", LLAMA3_ATTN, 2, 8, H100, table)[0]    # 8 is nearer 16
    table = (row(batch=1, ours=50), row(batch=4, ours=300, inductor=200))
    assert not policy.verdict("attention", LLAMA3_ATTN, 2, 2, H100, table)[0]    # a tie goes to the larger batch


def test_a_measured_batch_speaks_only_within_a_factor_of_two():
    table = (row(batch=1, ours=50), row(batch=2, ours=50))
    assert policy.verdict("attention", LLAMA3_ATTN, 2, 4, H100, table)[0]        # 4 is 2x of 2
    use, why = policy.verdict("attention", LLAMA3_ATTN, 2, 8, H100, table)
    assert not use and "batch 1, 2 only" in why and "2x of 8" in why


def test_unmeasured_shape_width_or_device_runs_inductor_and_says_so():
    table = (row(),)
    other_shape = dict(LLAMA3_ATTN, kv_heads=32)
    for args in [(other_shape, 2, 1, H100), (LLAMA3_ATTN, 4, 1, H100), (LLAMA3_ATTN, 2, 1, "NVIDIA H200")]:
        use, why = policy.verdict("attention", *args, table)
        assert not use and "not benchmarked" in why


def test_the_shipped_table_names_each_row_by_its_family_shape_keys():
    for r in policy.load():
        assert [k for k, _ in r.shape] == list(policy.SHAPE_KEYS[r.block])
        assert r.ours_us > 0 and r.inductor_us > 0 and r.element_bytes in (2, 4)


def _policy_table():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("policy_table", Path(__file__).parents[1] / "benchmarks" / "policy_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_builder_keeps_the_last_default_row_and_inductors_best_per_key():
    """Ours: the last row of the default kernel with an Inductor time beside it. Inductor: its fastest time at
    that key in any row (a variant's row too: Inductor's code is the same whatever we ran beside it)."""
    mod = _policy_table()
    base = dict(bench="attention", device=H100 + " (132 SMs)", date="2026-11-23")
    cfg = dict(model="llama-3-8b", batch=2, seq=1024, dtype="fp16", shape=LLAMA3_ATTN)
    rows = [dict(base, config=cfg, ours_us=90.0, inductor_us=65.0),                          # older kernel
            dict(base, config=cfg, ours_us=64.0, inductor_us=None),                          # no Inductor
            dict(base, config=dict(cfg, variant="mma"), ours_us=10.0, inductor_us=65.0),     # not the default
            dict(base, config=dict(cfg, variant="v4_mma"), ours_us=64.5, inductor_us=65.1),  # the default, named
            dict(base, config={k: v for k, v in cfg.items() if k != "shape"}, ours_us=1.0, inductor_us=2.0)]
    (e,) = mod.entries(rows, {"attention": "v4_mma", "mla": "split", "ffn": None})
    assert (e["ours_us"], e["inductor_us"], e["element_bytes"]) == (64.5, 65.0, 2)


def test_a_row_of_a_kernel_source_that_did_not_land_counts_for_inductor_only():
    """An A/B row of an experimental source (config["source"], e.g. round 18's staging, rejected) never stands
    for the shipped kernel; the Inductor time beside it is still Inductor's."""
    mod = _policy_table()
    base = dict(bench="attention", device=H100 + " (132 SMs)", date="2026-12-07")
    cfg = dict(model="llama-3-8b", batch=2, seq=1024, dtype="bf16", shape=LLAMA3_ATTN, variant="v5_ring")
    rows = [dict(base, config=cfg, ours_us=62.0, inductor_us=66.0),
            dict(base, config=dict(cfg, source="round 18 (not merged)"), ours_us=40.0, inductor_us=64.0)]
    (e,) = mod.entries(rows, {"attention": "v5_ring", "mla": None, "ffn": None})
    assert (e["ours_us"], e["inductor_us"]) == (62.0, 64.0)


def test_a_ringless_v5_row_stands_for_the_default_only_where_its_launcher_drops_the_ring():
    """The default (v5_ring) launches exactly v5 except where the K/V ring runs (one query head per K/V head
    (MHA) at the batch buckets with the ring path, batch 2 among them): a v5 row counts as the default's
    everywhere else (GQA; MHA at batch 16) and never at MHA batch 2."""
    mod = _policy_table()
    defaults = {"attention": "v5_ring", "mla": None, "ffn": None}
    base = dict(bench="attention", device=H100 + " (132 SMs)", date="2026-11-24", inductor_us=100.0)
    mha = dict(hidden=4096, heads=32, kv_heads=32, head_dim=128)
    cfg = dict(model="m", seq=1024, dtype="fp16", variant="v5")
    rows = [dict(base, config=dict(cfg, batch=2, shape=LLAMA3_ATTN), ours_us=60.0),   # GQA: the ring is dropped
            dict(base, config=dict(cfg, batch=16, shape=mha), ours_us=110.0),         # batch 16: dropped
            dict(base, config=dict(cfg, batch=2, shape=mha), ours_us=80.0)]           # MHA batch 2: the ring runs
    assert sorted(e["ours_us"] for e in mod.entries(rows, defaults)) == [60.0, 110.0]
    rows.append(dict(base, config=dict(cfg, batch=2, shape=mha, variant="v5_ring"), ours_us=79.0))
    assert sorted(e["ours_us"] for e in mod.entries(rows, defaults)) == [60.0, 79.0, 110.0]


def test_at_batch_one_only_the_claimed_tile_kernel_in_its_default_build_is_the_default():
    """attention_flow.is_default: batch 1 runs the claimed-tile kernel, so only its rows in the build and cut the
    launcher picks (here MHA: lean hand-offs and the dense-mask skip, no token lanes or split, the landed chunk cap;
    rows before round 31 carry none of the build flags) speak for the kernel there."""
    mod = _policy_table()
    base = dict(bench="attention", device=H100 + " (132 SMs)", date="2026-12-07", inductor_us=70.0)
    cfg = dict(model="llama-2-7b", batch=1, seq=1024, dtype="bf16",
               shape=dict(hidden=4096, heads=32, kv_heads=32, head_dim=128))
    lean = dict(flow_lean_sync=True, flow_dense_mask=True)
    rows = [dict(base, config=dict(cfg, variant="v5_heads"), ours_us=78.0),
            dict(base, config=dict(cfg, variant="flow"), ours_us=67.9),   # before round 31: fenced hand-offs
            dict(base, config=dict(cfg, variant="flow", flow_max_chunks=64, **lean), ours_us=60.0),
            dict(base, config=dict(cfg, variant="flow", flow_token_lanes=True, **lean), ours_us=61.0),
            dict(base, config=dict(cfg, variant="flow", flow_o_split=True, **lean), ours_us=62.0)]
    assert mod.entries(rows, mod.default_variants()) == []
    rows.append(dict(base, config=dict(cfg, variant="flow", **lean), ours_us=66.3))
    (e,) = mod.entries(rows, mod.default_variants())
    assert e["ours_us"] == 66.3
    gqa = dict(cfg, model="llama-3-8b", shape=dict(hidden=4096, heads=32, kv_heads=8, head_dim=128))
    rows = [dict(base, config=dict(gqa, variant="flow", **lean), ours_us=56.8),
            dict(base, config=dict(gqa, variant="flow", flow_token_lanes=True, flow_o_split=True, **lean),
                 ours_us=53.9)]
    (e,) = mod.entries(rows, mod.default_variants())
    assert e["ours_us"] == 53.9


def test_a_row_without_the_head_lane_bit_stands_for_a_head_lane_default_only_where_that_loop_never_runs():
    """With the default v5_heads (v5_ring + the head-lane loop of the batch-1/2 GQA builds at head_dim 64/128), a
    v5_ring row counts as the default's at MHA batch 2 (where the ring runs and the loop does not; batch-1 MHA runs
    the claimed-tile kernel) and at batch 4, never at batch-2 GQA, where the two launch different code (batch 1
    runs the claimed-tile kernel)."""
    mod = _policy_table()
    defaults = {"attention": "v5_heads", "mla": None, "ffn": None}
    base = dict(bench="attention", device=H100 + " (132 SMs)", date="2026-12-07", inductor_us=100.0)
    mha = dict(hidden=4096, heads=32, kv_heads=32, head_dim=128)
    cfg = dict(model="m", seq=1024, dtype="bf16", variant="v5_ring")
    rows = [dict(base, config=dict(cfg, batch=2, shape=mha), ours_us=80.0),            # MHA: no head lanes
            dict(base, config=dict(cfg, batch=4, shape=LLAMA3_ATTN), ours_us=83.0),    # batch 4: no head lanes
            dict(base, config=dict(cfg, batch=2, shape=LLAMA3_ATTN), ours_us=61.0)]    # batch-2 GQA: they run
    assert sorted(e["ours_us"] for e in mod.entries(rows, defaults)) == [80.0, 83.0]
    rows.append(dict(base, config=dict(cfg, batch=2, shape=LLAMA3_ATTN, variant="v5_heads"), ours_us=58.0))
    assert sorted(e["ours_us"] for e in mod.entries(rows, defaults)) == [58.0, 80.0, 83.0]


def test_an_inductor_outlier_cannot_hand_a_block_to_the_kernel():
    """Timing noise only adds time: a slow Inductor sample (99.6 us after 37.8 at the same key) is ignored, so
    the verdict compares ours with Inductor's best, and a later, faster Inductor figure lowers it further."""
    mod = _policy_table()
    base = dict(bench="attention", device=H100 + " (132 SMs)", date="2026-11-23")
    cfg = dict(model="llama-3.2-1b", batch=2, seq=1024, dtype="bf16", shape=LLAMA3_ATTN)
    rows = [dict(base, config=cfg, ours_us=35.2, inductor_us=37.8),
            dict(base, config=cfg, ours_us=34.6, inductor_us=99.6)]
    (e,) = mod.entries(rows, {"attention": None, "mla": None, "ffn": None})
    assert (e["ours_us"], e["inductor_us"]) == (34.6, 37.8)
    rows.append(dict(base, config=dict(cfg, variant="other"), ours_us=1.0, inductor_us=33.0))
    (e,) = mod.entries(rows, {"attention": None, "mla": None, "ffn": None})
    assert (e["ours_us"], e["inductor_us"]) == (34.6, 33.0)


QWEN_FFN = dict(hidden=896, intermediate=4864)


def ffn_row(scope, ours, inductor, batch=1):
    return policy.Measured(block="ffn", device=H100 + " (132 SMs)", shape=policy.shape_key("ffn", QWEN_FFN),
                           element_bytes=2, batch=batch, seq=0, ours_us=ours, inductor_us=inductor,
                           date="2026-11-23", scope=scope)


def test_a_decode_step_row_outranks_the_block_row_at_its_shape_and_batch():
    """Alone the block loses (Inductor compiles it alone); in the step it wins (Inductor's real code there)."""
    table = (ffn_row("block", 20.9, 18.4), ffn_row("step", 1559.2, 1703.4))
    use, why = policy.verdict("ffn", QWEN_FFN, 2, 1, H100, table)
    assert use and "decode step with vs without the kernel" in why and "1559.2 vs 1703.4" in why
    table = (ffn_row("block", 18.0, 18.4), ffn_row("step", 1848.4, 1442.4))
    assert not policy.verdict("ffn", QWEN_FFN, 2, 1, H100, table)[0]
    # a step row at another batch does not speak for this one: the nearest batch's rows decide
    table = (ffn_row("block", 20.9, 18.4), ffn_row("step", 1559.2, 1703.4, batch=16))
    assert not policy.verdict("ffn", QWEN_FFN, 2, 1, H100, table)[0]


def attention_step(prompt, ours, inductor):
    return policy.Measured(block="attention", device=H100 + " (132 SMs)",
                           shape=policy.shape_key("attention", LLAMA3_ATTN), element_bytes=2, batch=1, seq=prompt,
                           ours_us=ours, inductor_us=inductor, date="2026-11-24", scope="step")


def test_step_rows_at_several_contexts_speak_at_the_one_nearest_the_static_cache():
    """Llama-3-8B's attention loses the step after a 512-token prompt and wins it after 3584: a model compiled
    with a 4096-token cache gets the kernel, one with an 832-token cache does not, and an unknown cache length
    needs every context to win."""
    table = (attention_step(512, 7140.1, 6508.3), attention_step(3584, 6764.5, 7722.4))
    use, why = policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, table, cached=4096)
    assert use and "3584 prompt: 6764.5 vs 7722.4" in why and "7140.1" not in why
    use, why = policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, table, cached=832)
    assert not use and "512 prompt: 7140.1 vs 6508.3" in why
    assert not policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, table)[0]
    assert not policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, table, cached=1300)[0]  # nearer 512 by ratio (split at ~1355)
    assert policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, table, cached=1400)[0]
    # a row that does not name its context (written before rows carried one) keeps every row in play
    legacy = (*table, attention_step(0, 7000.0, 6900.0))
    assert not policy.verdict("attention", LLAMA3_ATTN, 2, 1, H100, legacy, cached=4096)[0]


def test_table_builder_keeps_one_step_row_per_context():
    mod = _policy_table()
    base = dict(bench="e2e_families", device=H100 + " (132 SMs)", date="2026-11-24", inductor_us=7722.4)
    rows = [dict(base, config=dict(model="llama3-8b", batch=1, seq=seq, dtype="bf16"), inductor_us=ind,
                 step_us={"inductor": ind, "attention only": ours})
            for seq, ours, ind in ((512, 7140.1, 6508.3), (3584, 6764.5, 7722.4))]
    steps = sorted((e["seq"], e["ours_us"]) for e in mod.step_entries(rows))
    assert steps == [(512, 7140.1), (3584, 6764.5)]


def test_table_builder_turns_an_e2e_row_that_isolates_the_ffn_into_a_step_row():
    mod = _policy_table()
    base = dict(bench="e2e", device=H100 + " (132 SMs)", date="2026-11-23", ours_us=1703.4, inductor_us=1705.8,
                config=dict(model="qwen2.5-0.5b", batch=1, seq=512, dtype="bf16"))
    ffn_only = ["ffn kernel measured slower than Inductor (...); kernels='all' runs it anyway"]
    rows = [dict(base, reasons=ffn_only, ours_kernels_all_us=1559.24),
            dict(base, reasons=ffn_only),                                                  # kernels=all not timed
            dict(base, reasons=ffn_only + ["attention kernel measured slower"], ours_kernels_all_us=1.0),
            dict(base, reasons=[], ours_kernels_all_us=1.0)]                                # auto used every kernel
    (e,) = mod.step_entries(rows)
    assert e["shape"] == QWEN_FFN and e["scope"] == "step" and (e["ours_us"], e["inductor_us"]) == (1559.2, 1703.4)


def test_table_builder_turns_each_family_of_an_e2e_families_row_into_a_step_row():
    """benchmarks/e2e_families.py: the step with one family fused (the rest Inductor's) against all Inductor."""
    mod = _policy_table()
    row = dict(bench="e2e_families", device=H100 + " (132 SMs)", date="2026-11-24", ours_us=1560.0, inductor_us=1500.0,
               config=dict(model="qwen2.5-0.5b", batch=1, seq=512, dtype="bf16"),
               step_us={"inductor": 1500.0, "all": 1560.0, "attention only": 1600.0, "ffn only": 1450.0})
    by_block = {e["block"]: e for e in mod.step_entries([row])}
    assert by_block["attention"]["shape"] == dict(hidden=896, heads=14, kv_heads=2, head_dim=64)
    assert (by_block["attention"]["ours_us"], by_block["attention"]["inductor_us"]) == (1600.0, 1500.0)
    assert by_block["ffn"]["shape"] == QWEN_FFN and by_block["ffn"]["ours_us"] == 1450.0
    assert all(e["scope"] == "step" for e in by_block.values())
