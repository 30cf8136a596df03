"""bench.quantization explains INT8 figures by what the measuring CPU has, read from /proc/cpuinfo."""

from __future__ import annotations

from bench.quantization import int8_kernel_note
from export.throughput import machine_description


def test_the_note_follows_the_cpu_flags():
    assert "AMX" in int8_kernel_note(["avx2", "avx512f", "avx512_vnni", "amx_int8"])
    vnni = int8_kernel_note(["avx2", "avx512f", "avx512_vnni"])
    assert "512-bit VPDPBUSD" in vnni and "AVX2 only" not in vnni
    assert "256-bit VPDPBUSD" in int8_kernel_note(["avx2", "avx_vnni"])
    avx2 = int8_kernel_note(["avx2"])
    assert "AVX2 only" in avx2 and "VNNI (" not in avx2
    assert "no AVX2" in int8_kernel_note([])


def test_the_note_names_this_machines_extensions():
    extensions = machine_description()["int8_extensions"]
    note = int8_kernel_note(extensions)
    assert all(flag in note for flag in extensions)
    assert ("AVX2 only" in note) == (extensions == ["avx2"] or extensions == ["avx2", "avx512f"])
