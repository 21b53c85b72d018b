"""CUDA C++ sources of orcd's kernels, compiled at run time with NVRTC (see nbs/06_cuda)."""
