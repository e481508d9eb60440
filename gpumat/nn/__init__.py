"""gpumat.nn: define-by-run autograd, layers, losses, optimizers, models, data and training,
all on gpumat's kernels, so every network trains on cuda, opencl or cpu.

    import gpumat as gm
    from gpumat import nn
    import gpumat.nn.functional as F

    model = nn.models.lenet5()
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = F.cross_entropy(model(x), labels)
    opt.zero_grad(); loss.backward(); opt.step()

    nn.summary(model, (1, 32, 32))              # shapes, parameters, FLOPs, memory per layer
    nn.save(model, "lenet5.npz"); nn.load_into(model, "lenet5.npz")

Modules: ``autograd`` (Variable, Function), ``functional`` (the differentiable ops),
``layers`` and ``module`` (Module, the layers), ``binary`` (BinaryConv2d, BinaryLinear:
binarized layers, XNOR-popcount inference), ``init``, ``optim`` (optimizers, schedules),
``models`` (the zoo), ``summary``, ``serialization`` (npz weights, checkpoints), ``netdef``
(JSON network definitions), ``data`` (datasets, DataLoader), ``train`` (the training loop)
and ``cli`` (``python -m gpumat train``).

Names and layouts follow PyTorch (``Conv2d.weight`` is out x in x kh x kw, state_dict keys
like ``features.0.weight``), so weights move between the two and PyTorch is the reference
the tests compare with.
"""
from . import binary, data, functional, init, models, netdef, optim
from .autograd import Function, Variable, enable_grad, is_grad_enabled, no_grad
from .binary import BinaryConv2d, BinaryLinear
from .gradcheck import GradcheckError, gradcheck
from .layers import (ELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                     CrossEntropyLoss, Dropout, Flatten, GlobalAvgPool2d, Identity, LeakyReLU,
                     Linear, LocalResponseNorm, LogSoftmax, MaxPool2d, MSELoss, NLLLoss, ReLU,
                     ReLU6, Sigmoid, Softmax, Tanh)
from .module import Module, ModuleList, Parameter, Sequential, StateDictError
from .serialization import (CheckpointError, load_checkpoint, load_into, load_state, save,
                            save_checkpoint)
from .summary import summary
from .train import evaluate, fit
