"""gpumat.nn: layers, autograd, optimizers and training on gpumat's kernels (coming next)."""
