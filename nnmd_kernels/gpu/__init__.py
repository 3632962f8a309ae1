"""GPU kernels (numba.cuda; CuPy arrays accepted). Importing this package needs numba.cuda,
which on a machine without a GPU works only in numba's simulator (NUMBA_ENABLE_CUDASIM=1)."""
