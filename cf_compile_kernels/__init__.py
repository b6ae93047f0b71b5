"""Run-time compiled Hopper cluster kernels (NVRTC -> cubin cache -> cluster launch)."""
