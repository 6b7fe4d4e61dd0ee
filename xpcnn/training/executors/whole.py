"""The plain step: the whole batch at once."""

from __future__ import annotations

from xpcnn.backends import Array
from xpcnn.training.executors.base import StepExecutor, forward_backward, unpack


class WholeBatchStep(StepExecutor):
    """The plain step: E = loss(model(x), y) on the whole batch, dE/dtheta by backpropagation
    (the first layer skips dE/dX, which nothing uses), then the optimizer's update."""

    def step(self, batch: tuple) -> Array:
        x, y, noise = unpack(batch)
        loss = forward_backward(self.model, self.loss_fn, x, y, noise)
        self.optimizer.step(self.model)
        return loss
