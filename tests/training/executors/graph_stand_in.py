"""A stand-in for CUDA graph capture, for TorchGraphStep's tests on a CPU (imported by the tests in
this folder: pytest puts a test's folder on sys.path)."""


class EagerGraphStandIn:
    """For tests on a CPU: 'capturing' runs nothing, and each replay calls the body on the static
    buffers, so :class:`~xpcnn.training.executors.TorchGraphStep`'s bookkeeping is checked without CUDA."""

    def __call__(self, body, buffers, torch):
        loss = torch.zeros((), dtype=buffers["params"][next(iter(buffers["params"]))].dtype,
                           device=buffers["x"].device)

        class Replay:
            def replay(self):
                loss.copy_(body(buffers).detach())

        return Replay(), loss
