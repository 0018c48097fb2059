"""Builds ``blendmask._C``, the fused blender op (csrc/).

Build against the installed torch: ``pip install --no-build-isolation -e .``

Environment:
  FORCE_CUDA=1            build the CUDA kernels even when no GPU is visible (needs nvcc)
  BLENDMASK_FORCE_CPU=1   build the CPU kernels only, even when a CUDA toolkit is found
  CUDA_HOME               root of the CUDA toolkit (the folder holding bin/nvcc and include/)
  TORCH_CUDA_ARCH_LIST    target GPUs, e.g. "8.0;9.0+PTX" (default: the visible GPUs, or when
                          none is visible the architectures the installed torch was built
                          for, with PTX for the newest: default_cuda_arch_list())
  MAX_JOBS                parallel compile jobs (ninja)
  DEBUG=1                 -O0 -g instead of -O3
"""
import glob
import os
import re
import subprocess
import sys

import torch
from packaging.version import Version
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
#: Used only when the installed torch does not say which GPUs it was built for.
FALLBACK_CUDA_ARCH_LIST = "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
MIN_TORCH = Version("2.4")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _log(message: str) -> None:
    print(f"[blendmask setup] {message}", file=sys.stderr, flush=True)


def _nvcc_version(cuda_home: str):
    """Version of ``cuda_home/bin/nvcc``, or None when it is missing or not a full toolkit."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc) or not os.path.exists(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    release = out.split("release")[-1].split(",")[0].strip()
    return Version(release)


def _use_cuda() -> bool:
    """Decide between the CUDA and the CPU-only build, explaining the choice."""
    if _env_flag("BLENDMASK_FORCE_CPU"):
        _log("BLENDMASK_FORCE_CPU=1: CPU-only build")
        return False
    force = _env_flag("FORCE_CUDA")
    if torch.version.cuda is None:
        if force:
            raise RuntimeError("FORCE_CUDA=1 but the installed torch was built without CUDA")
        _log("torch has no CUDA support: CPU-only build")
        return False
    nvcc_version = _nvcc_version(CUDA_HOME) if CUDA_HOME else None
    if nvcc_version is None:
        message = (
            f"no CUDA toolkit found (CUDA_HOME={CUDA_HOME!r} holds no bin/nvcc and include/cuda_runtime.h); "
            "set CUDA_HOME to the toolkit root"
        )
        if force:
            raise RuntimeError("FORCE_CUDA=1 but " + message)
        _log(message + ": CPU-only build")
        return False
    torch_cuda = Version(torch.version.cuda)
    if nvcc_version.major != torch_cuda.major:
        message = f"nvcc {nvcc_version} does not match the CUDA {torch_cuda} torch was built with"
        if force:
            raise RuntimeError("FORCE_CUDA=1 but " + message)
        _log(message + ": CPU-only build")
        return False
    if not (force or torch.cuda.is_available()):
        _log(f"CUDA toolkit {nvcc_version} found at {CUDA_HOME} (no GPU visible): building the CUDA kernels")
    return True


def default_cuda_arch_list() -> str:
    """The GPUs the installed torch was built for (``torch.cuda.get_arch_list()``, e.g.
    ``sm_75 ... sm_120``) as a TORCH_CUDA_ARCH_LIST, with PTX for the newest so that later GPUs
    can JIT it: a build on a machine without a GPU runs wherever that torch runs."""
    archs = []
    for name in torch.cuda.get_arch_list():
        m = re.fullmatch(r"sm_(\d+)(\d)([a-z]?)", name)
        if m:
            archs.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    if not archs:
        return FALLBACK_CUDA_ARCH_LIST
    archs = sorted(set(archs))
    names = [f"{major}.{minor}{suffix}" for major, minor, suffix in archs]
    names[-1] += "+PTX"
    return ";".join(names)


def _cuda_include_dirs():
    """Headers of the CUDA libraries (cusparse.h, ...) that ship in torch's nvidia wheels."""
    dirs = []
    for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
        for site in sys.path:
            dirs.extend(sorted(glob.glob(os.path.join(site, pattern))))
    return [d for d in dict.fromkeys(dirs) if os.path.exists(os.path.join(d, "cusparse.h"))][:1]


def get_extensions():
    if Version(torch.__version__.split("+")[0]) < MIN_TORCH:
        raise RuntimeError(f"blendmask needs torch >= {MIN_TORCH}, found {torch.__version__}")
    debug = _env_flag("DEBUG")
    use_cuda = _use_cuda()
    optimise = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp"))) + sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    extra_compile_args = {
        # -fno-trapping-math lets GCC vectorise the CPU softmax loops (exp included); it
        # changes no IEEE result, only allows if-conversion of float compares.
        "cxx": optimise + ["-fopenmp", "-fno-trapping-math", "-DBLENDMASK_PYTHON_MODULE"],
    }
    extra_link_args = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, CSRC)]
    extension = CppExtension
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_arch_list()
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        extra_compile_args["nvcc"] = optimise + ["-lineinfo", "--expt-relaxed-constexpr"]
        include_dirs += _cuda_include_dirs()
        extension = CUDAExtension
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "(visible GPUs)") if use_cuda else "-"
    _log(
        "configuration: "
        + ", ".join(
            [
                f"backend={'CUDA' if use_cuda else 'CPU'}",
                f"torch={torch.__version__}",
                f"CUDA_HOME={CUDA_HOME if use_cuda else '-'}",
                f"TORCH_CUDA_ARCH_LIST={arch_list}",
                f"MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}",
                f"DEBUG={int(debug)}",
                f"sources={len(sources)}",
            ]
        )
    )
    return [
        extension(
            "blendmask._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
