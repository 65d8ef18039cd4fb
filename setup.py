"""Build of the native extension kga_fast._C (fused KGA loss kernels).

- The C++ CPU kernels (csrc/*.cpp) are always built.
- The CUDA kernels (csrc/cuda/*.cu) are built whenever a CUDA toolkit is found, even on a
  machine without a GPU, so that CI compiles them. With no GPU visible and no
  TORCH_CUDA_ARCH_LIST set, we compile for Hopper (9.0) only, to keep the build short.
- KGA_FAST_SKIP_NATIVE_BUILD=1 skips the extension entirely: everything then runs on the
  pure-PyTorch reference path, and asking for impl="fused" is a clear error.
- KGA_FAST_SKIP_CUDA_BUILD=1 builds the CPU kernels only.
- MAX_JOBS bounds ninja's parallel compile jobs, as for torch's own extensions.
"""

import glob
import os
import sys

from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def native_extensions():
    if _flag("KGA_FAST_SKIP_NATIVE_BUILD"):
        print("kga_fast: KGA_FAST_SKIP_NATIVE_BUILD set, building no native extension")
        return [], {}
    # The `nvcc` on some PATHs is a wrapper script, which makes torch guess CUDA_HOME wrong.
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join(here, "csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(here, "csrc", "cuda", "*.cu")))
    with_cuda = (
        not _flag("KGA_FAST_SKIP_CUDA_BUILD")
        and CUDA_HOME is not None
        and torch.version.cuda is not None
        and bool(cuda_sources)
    )
    # No -std flag: BuildExtension adds the standard the installed torch needs (C++20 for 2.14).
    cxx_flags = ["-O3", "-fdiagnostics-color=always"]
    link_flags = []
    # at::parallel_for is an OpenMP pragma inlined from ATen's headers: without -fopenmp the CPU
    # kernels compile to one thread. Linking -fopenmp names libgomp.so.1, which resolves to the
    # copy torch has already loaded (one OpenMP runtime, torch's thread settings).
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    if with_cuda:
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        extra["nvcc"] = ["-O3", "-lineinfo"]  # no --use_fast_math: exact exp/log for parity
        ext = CUDAExtension(
            "kga_fast._C",
            [os.path.relpath(p, here) for p in cpp_sources + cuda_sources],
            extra_compile_args=extra,
            extra_link_args=link_flags,
            define_macros=[("KGA_FAST_WITH_CUDA", "1")],
        )
        print(
            f"kga_fast: building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})"
        )
    else:
        ext = CppExtension(
            "kga_fast._C",
            [os.path.relpath(p, here) for p in cpp_sources],
            extra_compile_args=extra,
            extra_link_args=link_flags,
        )
        print("kga_fast: building CPU kernels only (no CUDA toolkit found)")
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
