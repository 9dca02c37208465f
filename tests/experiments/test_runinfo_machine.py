"""What reports record about the machine: a hypervisor's model name alone ("AMD EPYC")
did not tell apart two machines whose timings differed by 1.5-3x (benchmarks/NOTES.md, 13)."""

from __future__ import annotations

from experiments.runinfo import cpu_model, matmul_gflops

BLOCK = """processor\t: {i}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 {flags} bmi2
"""


def cpuinfo(family: int, model: int, flags: str) -> str:
    """Two processors' blocks; the second differs, and only the first is read."""
    first = BLOCK.format(i=0, family=family, model=model, flags=flags)
    return first + "\n" + BLOCK.format(i=1, family=99, model=99, flags="avx512f")


def test_cpu_model_names_family_model_and_vector_width():
    assert cpu_model(cpuinfo(26, 2, "avx avx2 fma avx512f avx512bw")) == (
        "AMD EPYC (family 26 model 2, AVX-512)"
    )
    assert cpu_model(cpuinfo(23, 49, "avx avx2 fma")) == "AMD EPYC (family 23 model 49, AVX2)"
    assert cpu_model(cpuinfo(6, 85, "sse4_2")) == "AMD EPYC (family 6 model 85)"


def test_cpu_model_without_the_numbers_is_the_name_alone():
    assert cpu_model("model name\t: Some CPU\n") == "Some CPU"


def test_matmul_rate_is_a_positive_number():
    rate = matmul_gflops(n=128, repeats=3)
    assert isinstance(rate, float) and rate > 0
