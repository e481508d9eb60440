"""Losses (softmax cross-entropy from logits, negative log-likelihood, mean squared error)
and the top-k accuracy metrics."""
import gpumat as gm

from ...errors import DtypeError, ShapeError
from ..autograd import Function, Variable, as_array

__all__ = ["cross_entropy", "nll_loss", "mse_loss", "one_hot", "top1", "top5", "topk_correct",
           "topk_hits"]


def _targets(target, logits, what):
    """Class indices as an int64 Array on the logits' backend, checked against N x C."""
    t = as_array(target, logits) if not isinstance(target, (Variable, gm.Array)) else \
        (target.data if isinstance(target, Variable) else target)
    if logits.ndim != 2:
        raise ShapeError(f"{what}: the input must be N x C (a row of scores per sample), got "
                         f"{logits.shape}")
    if t.dtype.kind not in "iu":
        raise DtypeError(f"{what}: the target must hold integer class indices, got {t.dtype}")
    if t.shape != (logits.shape[0],):
        raise ShapeError(f"{what}: the target must have shape ({logits.shape[0]},) for an "
                         f"input of shape {logits.shape}, got {t.shape}")
    if t.backend != logits.backend:
        t = t.to(logits.backend)
    if t.size:
        lo, hi = int(t.min().item()), int(t.max().item())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(f"{what}: target class {lo if lo < 0 else hi} is out of range "
                             f"for {logits.shape[1]} classes")
    return t


def _weighted_sum(q, log_p):
    """sum_c q_c log_p_c per row, where the classes of weight 0 add exactly 0: a class masked
    with a -inf logit (log_p -inf) that is not the target must not make the row NaN (0 * -inf),
    as it does not in torch."""
    return gm.where(q != 0, q * log_p, 0).sum(axis=1)


def one_hot(target, num_classes, dtype="single"):
    """An N x num_classes matrix with 1 at (i, target[i])."""
    t = target.data if isinstance(target, Variable) else target
    classes = gm.arange(num_classes, dtype="int64", backend=t.backend)
    return (classes.reshape(1, num_classes) == t.astype("int64").reshape(-1, 1)).astype(dtype)


class CrossEntropy(Function):
    """mean over samples of -sum_c q_c log softmax(x)_c, q the (smoothed) one-hot target;
    the gradient with respect to the logits is (softmax(x) - q) / N."""

    def __init__(self, target, label_smoothing, reduction):
        self.target, self.smoothing, self.reduction = target, label_smoothing, reduction

    def forward(self, logits):
        n, classes = logits.shape
        log_p = gm.log_softmax(logits, axis=1)
        q = one_hot(self.target, classes, logits.dtype)
        if self.smoothing:
            q = q * (1 - self.smoothing) + self.smoothing / classes
        per_sample = -_weighted_sum(q, log_p)
        if self.recording:
            self.log_p, self.q = log_p, q
        if self.reduction == "none":
            return per_sample
        total = per_sample.sum()
        if self.reduction == "sum":
            return total
        # the mean of no samples is NaN, as torch's (0 / 0)
        return total / n if n else total * float("nan")

    def backward(self, grad):
        delta = gm.exp(self.log_p) - self.q
        if self.reduction == "none":
            return delta * grad.reshape(-1, 1)
        scale = grad if self.reduction == "sum" else grad / max(delta.shape[0], 1)
        return delta * scale


def _reduction(reduction, what):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{what}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def cross_entropy(logits, target, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy from raw scores (numerically stable: log_softmax subtracts each
    row's maximum), as torch.nn.functional.cross_entropy with class-index targets."""
    x = logits.data if isinstance(logits, Variable) else logits
    t = _targets(target, x, "cross_entropy")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    return CrossEntropy.apply(logits, target=t, label_smoothing=float(label_smoothing),
                              reduction=_reduction(reduction, "cross_entropy"))


class NLLLoss(Function):
    def __init__(self, target, reduction):
        self.target, self.reduction = target, reduction

    def forward(self, log_p):
        self.q = one_hot(self.target, log_p.shape[1], log_p.dtype)
        per_sample = -_weighted_sum(self.q, log_p)
        if self.reduction == "none":
            return per_sample
        total = per_sample.sum()
        n = log_p.shape[0]
        if self.reduction == "sum":
            return total
        return total / n if n else total * float("nan")     # no samples: NaN, as torch

    def backward(self, grad):
        if self.reduction == "none":
            return -self.q * grad.reshape(-1, 1)
        scale = grad if self.reduction == "sum" else grad / max(self.q.shape[0], 1)
        return -self.q * scale


def nll_loss(log_probabilities, target, reduction="mean"):
    """Negative log-likelihood of class-index targets given log-probabilities (N x C)."""
    x = log_probabilities.data if isinstance(log_probabilities, Variable) else log_probabilities
    t = _targets(target, x, "nll_loss")
    return NLLLoss.apply(log_probabilities, target=t,
                         reduction=_reduction(reduction, "nll_loss"))


class MSELoss(Function):
    def __init__(self, reduction):
        self.reduction = reduction

    def forward(self, prediction, target):
        if prediction.shape != target.shape:
            raise ShapeError(f"mse_loss: the prediction has shape {prediction.shape} but the "
                             f"target has shape {target.shape}")
        self.difference = prediction - target
        squared = self.difference * self.difference
        if self.reduction == "none":
            return squared
        total = squared.sum()
        return total if self.reduction == "sum" else total / max(squared.size, 1)

    def backward(self, grad):
        d = self.difference
        scale = grad * 2 if self.reduction != "mean" else grad * (2.0 / max(d.size, 1))
        g = d * scale
        needs_p, needs_t = self.needs_grad
        return g if needs_p else None, -g if needs_t else None


def mse_loss(prediction, target, reduction="mean"):
    """Mean (or sum) of squared differences."""
    return MSELoss.apply(prediction, target, reduction=_reduction(reduction, "mse_loss"))


def topk_hits(logits, target, k):
    """How many rows of ``logits`` (N x C) rank their target class among their ``k`` highest
    scores, as a 0-d int64 Array left on the device (sum it over batches, read it once).  A
    row's rank is the number of classes scored strictly higher than the target, so ties
    count in the target's favour; a row holding a NaN counts as a miss (a diverged model
    must not look accurate)."""
    x = logits.data if isinstance(logits, Variable) else logits
    t = _targets(target, x, "topk_correct")
    is_target = one_hot(t, x.shape[1], "logical")
    target_score = gm.where(is_target, x, 0).sum(axis=1, keepdims=True)
    higher = (x > target_score).astype("int32").sum(axis=1)
    finite = ~gm.isnan(x).any(axis=1)
    return ((higher < k) & finite).sum()


def topk_correct(logits, target, k):
    """``topk_hits`` as a Python int."""
    return int(topk_hits(logits, target, k).item())


def top1(logits, target):
    """Fraction of rows whose highest score is the target class."""
    return topk_correct(logits, target, 1) / max(logits.shape[0], 1)


def top5(logits, target):
    """Fraction of rows that rank the target class among their five highest scores."""
    return topk_correct(logits, target, 5) / max(logits.shape[0], 1)
