"""benchmarks/e2e.py's timing order: compared variants are measured in alternating rounds."""

from benchmarks.e2e import Session


def test_interleaved_timing_runs_every_variant_early_and_late():
    """A later measurement in a run reads slower on a heating GPU: each round starts one variant later, so every
    variant is timed first as often as last, and the figure is the median of its rounds."""
    session = Session.__new__(Session)  # no model: time_step is replaced below
    order: list[str] = []
    times = {"a": [3.0, 1.0, 2.0], "b": [5.0, 6.0, 4.0]}

    def time_step(step, steps, repeats):
        assert (steps, repeats) == (32, 1)
        order.append(step)
        return times[step][sum(s == step for s in order) - 1]

    session.time_step = time_step
    out = session.time_interleaved({"inductor": "a", "ours": "b"}, 32, 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert out == {"inductor": 2.0, "ours": 5.0}
