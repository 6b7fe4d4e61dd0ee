"""Losses.  ``forward(output, target)`` returns a 0-d array (the mean over the
batch); ``backward()`` returns dE/dO for the output that was passed in."""

from __future__ import annotations

from array_api_compat import device as device_of

from xpcnn.backends import Array, Namespace, namespace


def _check_pair(xp: Namespace, output: Array, target: Array, name: str) -> None:
    if not xp.isdtype(output.dtype, "real floating"):
        raise TypeError(f"{name}: expected floating-point outputs, got dtype {output.dtype}")
    if tuple(target.shape) != tuple(output.shape):
        raise ValueError(f"{name}: target shape {tuple(target.shape)} does not match output shape "
                         f"{tuple(output.shape)}")


class MSELoss:
    """The article's squared error E = 1/2 (y - O)^2, summed over outputs and
    averaged over the batch.  dE/dO = (O - y) / N."""

    def forward(self, output: Array, target: Array) -> Array:
        xp = namespace(output, target, where="MSELoss.forward")
        _check_pair(xp, output, target, "MSELoss")
        target = xp.astype(target, output.dtype)
        self._diff, self._n = output - target, output.shape[0]
        return 0.5 * xp.sum(self._diff * self._diff) / self._n

    def backward(self) -> Array:
        return self._diff / self._n

    __call__ = forward


class BCELoss:
    """Binary cross-entropy on probabilities O in (0, 1):
    E = -[y log O + (1 - y) log(1 - O)], averaged over the batch.
    O is clipped to [eps, 1 - eps] so that a saturated sigmoid gives a finite loss.
    dE/dO = (O - y) / (O (1 - O)) / N."""

    def __init__(self, eps: float | None = None) -> None:
        self.eps = eps

    def forward(self, output: Array, target: Array) -> Array:
        xp = namespace(output, target, where="BCELoss.forward")
        _check_pair(xp, output, target, "BCELoss")
        eps = self.eps if self.eps is not None else float(xp.finfo(output.dtype).eps)
        target = xp.astype(target, output.dtype)
        self._p = xp.clip(output, eps, 1.0 - eps)
        self._y, self._n = target, output.shape[0]
        per_item = target * xp.log(self._p) + (1.0 - target) * xp.log(1.0 - self._p)
        return -xp.sum(per_item) / self._n

    def backward(self) -> Array:
        p = self._p
        return (p - self._y) / (p * (1.0 - p)) / self._n

    __call__ = forward


class SoftmaxCrossEntropyLoss:
    """Cross-entropy of softmax(Z) against integer class labels, fused and stable:
    E = logsumexp(Z) - Z[label], averaged over the batch (logsumexp is computed
    after subtracting the row maximum, so no exp overflows).
    dE/dZ = (softmax(Z) - onehot(label)) / N."""

    def forward(self, logits: Array, labels: Array) -> Array:
        xp = namespace(logits, labels, where="SoftmaxCrossEntropyLoss.forward")
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropyLoss: expected logits of shape (N, classes), "
                             f"got {tuple(logits.shape)}")
        if not xp.isdtype(logits.dtype, "real floating"):
            raise TypeError(f"SoftmaxCrossEntropyLoss: expected floating-point logits, got dtype {logits.dtype}")
        n, classes = logits.shape
        if tuple(labels.shape) != (n,) or not xp.isdtype(labels.dtype, "integral"):
            raise ValueError(f"SoftmaxCrossEntropyLoss: expected {n} integer labels of shape ({n},), "
                             f"got shape {tuple(labels.shape)} dtype {labels.dtype}")
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        exp = xp.exp(shifted)
        total = xp.sum(exp, axis=1, keepdims=True)
        classes_row = xp.arange(classes, dtype=labels.dtype, device=device_of(labels))
        self._onehot = xp.astype(labels[:, None] == classes_row[None, :], logits.dtype)
        self._softmax, self._n = exp / total, n
        log_likelihood = xp.sum(shifted * self._onehot, axis=1) - xp.log(total[:, 0])
        return -xp.sum(log_likelihood) / n

    def backward(self) -> Array:
        return (self._softmax - self._onehot) / self._n

    __call__ = forward


Loss = MSELoss | BCELoss | SoftmaxCrossEntropyLoss
"""Any of the losses above (each has ``forward(output, target)`` and ``backward()``)."""

LOSSES = {"mse": MSELoss, "bce": BCELoss, "softmax_ce": SoftmaxCrossEntropyLoss}
