"""Makes this machine stand in for a CPU without bfloat16 (AVX2 only), for the benchmarks.

    PYTHONPATH=benchmarks/avx2:. MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
        ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/…

The variables keep MKL, OpenBLAS and oneDNN to AVX2 kernels; this module makes vgray's check of
native bfloat16 say no, so k-means runs in float32 as it does there. Ray's workers inherit
PYTHONPATH, so they load it too. Costs nothing until vgray.algo.vocab is imported.
"""

import importlib.abc
import sys


class _NoBF16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "vgray.algo.vocab":
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.bf16_matmul_is_fast = lambda device: False

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _NoBF16())
