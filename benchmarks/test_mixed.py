"""The mixed NumPy CNN step (fastconv's calls between NumPy's and one ``@``), group ``mixed_step``.

The timed call is the whole step; ``extra_info`` holds each op's time alone and inside the step
and a convolution's time right after a matmul (``fastconv.mixed.mixed_step``), so a regression in
how fastconv shares the cores shows as a ratio, not only as a slower step.
"""

from fastconv import mixed


def test_mixed_step(benchmark):
    benchmark.group = "mixed_step"
    step = mixed.make_step()
    benchmark.pedantic(step, warmup_rounds=3, rounds=30, iterations=1)
    result = mixed.mixed_step(steps=30)
    benchmark.extra_info.update(step_ms_measured_apart=result["step_ms"], ops=result["ops"],
                                after_matmul=result["after_matmul"])
