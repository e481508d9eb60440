"""gpumat.nn.functional: every differentiable op as a function of Variables (and Arrays).

    import gpumat.nn.functional as F
    y = F.relu(F.conv2d(x, w, b, padding=1))
    loss = F.cross_entropy(y.flatten(1) @ v, labels)

Each op is a ``Function`` (forward and backward on gpumat ops) with a lowercase wrapper,
grouped by family: ``math`` (arithmetic, products, reductions, shapes), ``conv``
(convolution, pooling), ``activation``, ``normalization`` (batch norm, LRN, dropout) and
``loss`` (losses and accuracy metrics).
"""
from .activation import elu, leaky_relu, log_softmax, relu, relu6, sigmoid, softmax, tanh
from .conv import adaptive_avg_pool2d, avg_pool2d, conv2d, global_avg_pool2d, max_pool2d
from .loss import (cross_entropy, mse_loss, nll_loss, one_hot, top1, top5, topk_correct,
                   topk_hits)
from .math import (add, cat, div, exp, flatten, getitem, linear, log, matmul, mean, mul, neg,
                   permute, pow, reshape, sqrt, sub, sum, transpose)
from .normalization import batch_norm, dropout, local_response_norm
