"""Launch arithmetic shared by the OpenCL and CUDA XNOR launchers (opencl_xnor.py,
cuda_xnor.py), whose kernels are one source, kernels/common/xnor.h: how much a launch pads
its work, and how xnor_gemm runs as a 1 x 1 convolution of one image."""


def cdiv(a, b):
    return -(-a // b)


def padded_work(pixels, filters, defines):
    """Output slots a launch over ``pixels`` x ``filters`` outputs computes: pixels in blocks
    of XNOR_WG x XNOR_PB, filters in blocks of XNOR_NV vectors of XNOR_VW (1 without)."""
    block = defines["XNOR_WG"] * defines["XNOR_PB"]
    per_item = defines["XNOR_NV"] * defines.get("XNOR_VW", 1)
    return cdiv(pixels, block) * block * cdiv(filters, per_item) * per_item


def gemm_roles(m, n, defines_for):
    """Whose rows play the filters in xnor_gemm's 1 x 1 convolution of a (m rows) and b
    (n rows), 'a' or 'b': the one that pads the launch less (ties: 'a', so the stores run
    along b's rows, the pixels).  ``defines_for(filters)`` gives a launch's defines."""
    a_filters = padded_work(n, m, defines_for(m))      # pixels = b's rows
    b_filters = padded_work(m, n, defines_for(n))      # pixels = a's rows
    return "a" if a_filters <= b_filters else "b"


def gemm_operands(a, b, m, n, roles):
    """(input, filters, pixels, filter count, output strides (image, filter, pixel)) of the
    1 x 1 convolution computing the m x n product of ``a`` and ``b`` with ``roles``."""
    if roles == "a":            # filters = a's rows, pixels = b's rows
        return b, a, n, m, (0, n, 1)
    return a, b, m, n, (0, 1, n)  # filters = b's rows, pixels = a's rows
