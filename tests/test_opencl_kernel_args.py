"""The opencl backend declares its kernels' scalar argument types (OpenCLBackend.typed_kernel):
pyopencl then packs a launch's scalars itself instead of taking each NumPy scalar through its
generic, slow path.  Every kernel the shared kernel cache hands out must be typed, and typing
must read each argument's real type (a wrong width would be a silently wrong launch)."""
import numpy as np
import pytest

cl = pytest.importorskip("pyopencl")

import gpumat as gm  # noqa: E402
from gpumat.backends import (opencl_activations, opencl_batchnorm, opencl_optimizers,  # noqa: E402
                             opencl_pool)
from gpumat.backends.opencl import scalar_arg_dtypes  # noqa: E402
from gpumat.backends.opencl_elementwise import _common_kernel  # noqa: E402

# every program whose kernels come from the shared cache (_common_kernel)
PROGRAMS = [opencl_activations._SOURCE, opencl_pool._SOURCE, opencl_batchnorm._SOURCE,
            opencl_optimizers._SOURCE, "opencl/random.cl", "opencl/pack_signs.cl"]


@pytest.mark.parametrize("relpath", PROGRAMS)
def test_every_cached_kernel_has_typed_scalars(ocl, relpath):
    kernels = ocl.program(relpath).all_kernels()
    assert kernels
    for kernel in kernels:
        dtypes = scalar_arg_dtypes(kernel)
        assert dtypes is not None, kernel.function_name
        assert len(dtypes) == kernel.num_args
        names = [kernel.get_arg_info(i, cl.kernel_arg_info.TYPE_NAME)
                 for i in range(kernel.num_args)]
        for name, dtype in zip(names, dtypes):
            assert (dtype is None) == name.endswith("*"), (kernel.function_name, name)


def test_argument_types_are_read_not_guessed(ocl):
    program = ocl.build("""
        typedef long i64;
        __kernel void k(__global float *x, __local float *s, __constant int *c, i64 n, int m,
                        float p, double d, ulong u, uint v, uchar b, short h) {}
        __kernel void v(__global float *x, float4 w) {}
    """)
    k = cl.Kernel(program, "k")
    assert scalar_arg_dtypes(k) == [None, None, None, np.int64, np.int32, np.float32,
                                    np.float64, np.uint64, np.uint32, np.uint8, np.int16]
    # a vector (or struct) argument: left to pyopencl's generic path
    assert scalar_arg_dtypes(cl.Kernel(program, "v")) is None
    # a program built without argument info: nothing to read, so the kernel stays untyped
    plain = cl.Program(ocl.context, "__kernel void k(__global float *x, long n) {}").build()
    assert scalar_arg_dtypes(cl.Kernel(plain, "k")) is None
    assert ocl.typed_kernel(plain, "k").num_args == 2


def test_typed_launch_packs_python_and_numpy_scalars(ocl):
    """A typed kernel takes Python numbers too (pyopencl packs them with the declared type),
    and gives the same results as gm.relu / leaky ReLU on every awkward length."""
    knl = _common_kernel(ocl, opencl_activations._SOURCE, "bias_act_flat_f32")
    code = opencl_activations.ACTIVATIONS["leaky_relu"]
    for n in (1, 7, 257, 1000):
        x_host = np.linspace(-3, 2, n, dtype=np.float32)
        x = gm.array(x_host, backend="opencl")
        out = ocl.empty((n,), np.float32)
        grid = opencl_activations._grid(ocl, n)
        knl(ocl.queue, (grid,), (opencl_activations.LOCAL_SIZE,), x._live.data, x._live.data,
            out.data, n, 1, 1, 0, code, 0.25)                 # Python ints and a float
        got = gm.Array._wrap(ocl, out).gather()
        np.testing.assert_array_equal(got, np.where(x_host >= 0, x_host, x_host * 0.25))
        np.testing.assert_array_equal(got, gm.leaky_relu(x, 0.25).gather())


def test_programs_build_with_exact_division_where_the_device_has_it(ocl):
    """float32 / and sqrt correctly rounded on GPUs that support it (OpenCL's default allows
    2.5 and 3 ulp), so that inv_std, the channel means and K have the cpu backend's bits
    there as on PoCL (a CPU device, whose / and sqrt are the processor's exact ones)."""
    supported = bool(ocl.cl_device.single_fp_config
                     & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT
                     and not ocl.cl_device.type & cl.device_type.CPU)   # (exact there anyway)
    assert ocl.exact_divide_sqrt == supported
    program = ocl.build("__kernel void nothing(void) {}")
    options = program.get_build_info(ocl.cl_device, cl.program_build_info.OPTIONS)
    assert ("-cl-fp32-correctly-rounded-divide-sqrt" in options) == supported
