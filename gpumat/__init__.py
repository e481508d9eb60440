"""gpumat: a MATLAB-like n-d matrix on CUDA, OpenCL and CPU, with hand-written kernels.

    import gpumat as gm
    A = gm.rand(1000, 1000)          # on the default backend (cuda -> opencl -> cpu)
    B = gm.gpu_array(numpy_array)     # on the default GPU backend
    C = gm.exp(A) @ B.T + 1
    C.gather()                        # back to NumPy
"""
from . import _openblas  # first: OpenBLAS reads its thread timeout when NumPy loads it
from . import backends as _backends_module
from . import backends   # callable: gm.backends() reports each backend, device or reason
from .array import Array, cumsum, matmul, mean, std, var
from .blas import gemm
from .binary import (pack_conv_input, pack_conv_weight, pack_signs, xnor_conv2d,
                     xnor_gemm)
from .activations import *  # noqa: F401,F403  (bias_add, relu, softmax, ... and backward)
from .conv import (col2im, conv2d, conv2d_backward_bias, conv2d_backward_input,
                   conv2d_backward_weight, im2col)
from .creation import (arange, array, colon, empty, eye, full, gpu_array, linspace, ones, rand,
                       randi, randn, seed, zeros)
from .dtypes import SUPPORTED as supported_dtypes
from .errors import (BackendMismatchError, BackendUnavailableError, DeviceMemoryError,
                     DtypeError, GpumatError, KernelBuildError, ReleasedArrayError, ShapeError)
from .functions import (abs, all, allclose, any, argmax, argmin, broadcast_to, cat, ceil, clip,
                        exp, find, floor, horzcat, ind2sub, isequal, isfinite, isinf, isnan,
                        ldivide, log, logical_and, logical_not, logical_or, logical_xor, max,
                        maximum, min, minimum, minus, mtimes, ndims, numel, permute, plus,
                        power, prod, rdivide, repmat, reshape, round, sigmoid, sign, size, sort,
                        sqrt, squeeze, sub2ind, sum, tanh, times, transpose, uminus, vertcat,
                        where)
from .io import load, save
from ._openblas import BlasSpinWarning
from .memory import keep, memory_info, scope
from .normalization import (BatchNormForward, BatchNormGradients, batch_norm_backward,
                            batch_norm_forward)
from .optimizers import adam_update, sgd_update
from .pooling import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d,
                      global_avg_pool2d_backward, max_pool2d, max_pool2d_backward)

__version__ = "0.1.0"

single = "single"
double = "double"
logical = "logical"


def use(name):
    """Make ``name`` ('cuda', 'opencl', 'cpu' or 'auto') the default backend."""
    return _backends_module.use(name).name


def default_backend():
    """Name of the backend new Arrays go to."""
    return _backends_module.default().name


def gather(a):
    """MATLAB's gather: a NumPy copy of an Array (other values pass through np.asarray)."""
    import numpy as np
    return a.gather() if isinstance(a, Array) else np.asarray(a)
