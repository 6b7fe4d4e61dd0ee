"""``Sequential``: a stack of layers with named parameters, state dicts and moves
between backends."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from xpcnn.backends import DTYPES, Backend, backend_of, dtype_name, resolve, to_numpy, transfer
from xpcnn.io import checkpoint
from xpcnn.io.checkpoint import short_repr
from xpcnn.nn.base import Layer, UnknownLayerError, build_layer, layer_class, state_shapes

if TYPE_CHECKING:
    from xpcnn.nn.summary import Summary


class StateDictError(ValueError):
    """A state dict that does not fit the model; the message lists every difference."""


class Sequential(Layer):
    """Layers applied in order.  Parameter names are ``"<index>.<param>"``
    (``"0.weight"``, ``"3.bias"``), stable across backends and checkpoints."""

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        self.layers = list(layers)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """Backpropagate through every layer.  With ``input_grad=False`` (training) the
        first layer skips dE/dX, which nothing uses, and None is returned."""
        for layer in reversed(self.layers[1:]):
            grad_out = layer.backward(grad_out)
        return self.layers[0].backward(grad_out, input_grad=input_grad)

    @contextlib.contextmanager
    def inference(self) -> Iterator[Sequential]:
        """``with model.inference(): model(x)`` -- inference forward passes (prediction,
        evaluation): every layer's ``training`` flag off, so that they keep nothing for a backward
        pass and Dropout and BatchNorm behave as in inference; the flags come back afterwards."""
        previous = [layer.training for layer in self.layers]
        try:
            for layer in self.layers:
                layer.training = False
            yield self
        finally:
            for layer, training in zip(self.layers, previous):
                layer.training = training

    def infer_shape(self, shape: tuple) -> tuple:
        """Propagate a per-example input shape through every layer, e.g. (1, 28, 28) -> (10,).
        A layer that cannot take its input raises, naming the layer and its position."""
        for index, layer in enumerate(self.layers):
            try:
                shape = layer.infer_shape(tuple(shape))
            except ValueError as exc:
                raise ValueError(f"layer {index} ({exc})") from None
        return tuple(shape)

    def summary(self, input_shape: tuple, dtype: str | None = None) -> Summary:
        """Per layer its output shape, parameters, multiply-adds and activation memory for one image
        of per-example ``input_shape`` (C, H, W), and the totals: ``print(model.summary((1, 28, 28)))``
        (:mod:`xpcnn.nn.summary`; ``dtype`` default: the parameters')."""
        from xpcnn.nn.summary import summarize

        return summarize(self.layers, input_shape, dtype or self.dtype)

    # -- parameters -------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        for index, layer in enumerate(self.layers):
            for name, value in layer.params.items():
                yield f"{index}.{name}", value

    def named_gradients(self) -> Iterator[tuple[str, Any]]:
        for index, layer in enumerate(self.layers):
            for name, value in layer.grads.items():
                yield f"{index}.{name}", value

    def _owner(self, qualified: str) -> tuple[Layer, str]:
        index, _, name = qualified.partition(".")
        return self.layers[int(index)], name

    def set_parameter(self, qualified: str, value: Any) -> None:
        layer, name = self._owner(qualified)
        layer.set_parameter(name, value)

    # -- buffers and noise (xpcnn.nn.batchnorm, xpcnn.nn.dropout) ----------------------------
    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        """(name, array) pairs of the layers' buffers -- state that is not a parameter, such as
        BatchNorm's running statistics (``"3.running_mean"``): in :meth:`state_dict`, no gradient,
        no optimizer."""
        for index, layer in enumerate(self.layers):
            for name, value in layer.buffers.items():
                yield f"{index}.{name}", value

    def set_buffer(self, qualified: str, value: Any) -> None:
        """Replace (never mutate) one buffer."""
        layer, name = self._owner(qualified)
        layer.set_buffer(name, value)

    def noise_shapes(self, batch: int, input_shape: tuple) -> dict:
        """``{"<index>.noise": shape}`` of every layer that needs random noise in a training forward
        (Dropout with p > 0), for a batch of ``batch`` inputs of per-example shape ``input_shape``
        (the shapes come from shape inference), in layer order; {} when none does."""
        shapes, shape = {}, tuple(input_shape)
        for index, layer in enumerate(self.layers):
            if layer.TAKES_NOISE:
                layer.where = f"layer {index}"
                per_example = layer.noise_shape(shape)
                if per_example is not None:
                    shapes[f"{index}.noise"] = (batch, *per_example)
            try:
                shape = layer.infer_shape(shape)
            except ValueError as exc:
                raise ValueError(f"layer {index} ({exc})") from None
        return shapes

    def set_noise(self, noise: dict) -> None:
        """Hand each layer named in ``noise`` (names from :meth:`noise_shapes`) its array of U[0, 1)
        uniforms for the next training forward, on the model's device and in its dtype
        (:func:`xpcnn.training.noise.draw_noise` draws them on the host)."""
        for qualified, value in noise.items():
            index, _, name = qualified.partition(".")
            layer = self.layers[int(index)] if index.isdigit() and int(index) < len(self.layers) else None
            if name != "noise" or layer is None or not layer.TAKES_NOISE:
                raise ValueError(f"set_noise: {qualified!r} names no layer that takes noise "
                                 f"(those that do: {', '.join(self._noise_names()) or 'none'})")
            layer.where = f"layer {index}"
            layer.set_noise(value)

    def _noise_names(self) -> list[str]:
        return [f"{index}.noise" for index, layer in enumerate(self.layers) if layer.TAKES_NOISE]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.named_parameters())

    @params.setter
    def params(self, value: dict[str, Any]) -> None:  # Layer.__init__ assigns {}; a Sequential keeps none of its own
        pass

    @property
    def grads(self) -> dict[str, Any]:
        return dict(self.named_gradients())

    @grads.setter
    def grads(self, value: dict[str, Any]) -> None:
        pass

    @property
    def buffers(self) -> dict[str, Any]:
        return dict(self.named_buffers())

    @buffers.setter
    def buffers(self, value: dict[str, Any]) -> None:
        pass

    @property
    def backend(self) -> Backend:
        first = next(self.named_parameters(), None)
        return backend_of(first[1]) if first else resolve("numpy")

    @property
    def dtype(self) -> str:
        first = next(self.named_parameters(), None)
        return dtype_name(first[1]) if first else "float64"

    def to(self, backend: Backend | str, device: str | None = None, dtype: str | None = None) -> Sequential:
        if not isinstance(backend, Backend):
            backend = resolve(backend, device)
        for layer in self.layers:
            layer.to(backend, dtype=dtype)
        return self

    # -- architecture and state ----------------------------------------------
    def config(self) -> list[dict]:  # type: ignore[override]  # one record per layer
        return [{"type": layer.name, **layer.config()} for layer in self.layers]

    @classmethod
    def from_config(cls, config: list[dict]) -> Sequential:
        """The model :meth:`config` describes (each layer by :func:`~xpcnn.nn.base.build_layer`)."""
        return cls(*(build_layer(record) for record in config))

    def state_dict(self) -> dict:
        """Parameters and buffers as host NumPy arrays under their stable names."""
        return {name: to_numpy(value).copy() for name, value in (*self.named_parameters(), *self.named_buffers())}

    def load_state_dict(self, state: dict) -> None:
        """Load host (or any backend's) arrays.  Everything is checked first; on any
        missing or extra name, wrong shape or wrong dtype nothing changes."""
        buffers = dict(self.named_buffers())
        current = {**dict(self.named_parameters()), **buffers}
        problems = [f"missing: {name}" for name in current if name not in state]
        problems += [f"unexpected: {name}" for name in state if name not in current]
        for name, value in current.items():
            if name not in state:
                continue
            new = state[name]
            if tuple(new.shape) != tuple(value.shape):
                problems.append(f"{name}: shape {tuple(new.shape)} in the state, {tuple(value.shape)} in the model")
            elif dtype_name(new) != dtype_name(value):
                problems.append(f"{name}: dtype {dtype_name(new)} in the state, {dtype_name(value)} in the model")
        if problems:
            raise StateDictError("state dict does not fit the model: " + "; ".join(problems))
        target = self.backend
        moved = {name: transfer(state[name], target) for name in current}
        for name, value in moved.items():
            (self.set_buffer if name in buffers else self.set_parameter)(name, value)

    def save(self, path: str | os.PathLike) -> None:
        """Write architecture, dtype and parameters to one ``.npz``, atomically."""
        checkpoint.save(path, self.state_dict(), {}, {"architecture": self.config(), "dtype": self.dtype})

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend | str = "numpy", device: str | None = None) -> Sequential:
        """Rebuild a model saved by :meth:`save` (or a training checkpoint) on ``backend``.

        The file is untrusted input: its architecture must be a non-empty list of known layers
        whose arguments build, its dtype float32 or float64, and each layer's parameter shapes --
        worked out from the layer's arguments before it is built (:meth:`Layer.state_shapes`), so
        that an edited size allocates nothing -- those of the arrays in the file.  Any problem is a
        :class:`~xpcnn.io.checkpoint.CheckpointError` naming the file (and the layer's index)."""

        def fail(problem: str) -> NoReturn:
            raise checkpoint.CheckpointError(f"{path}: {problem}")

        state, _, meta = checkpoint.load(path)
        dtype, architecture = meta.get("dtype"), meta.get("architecture")
        if dtype not in DTYPES:
            fail(f"dtype must be float32 or float64, got {short_repr(dtype)}")
        if not isinstance(architecture, list) or not architecture:
            fail(f"architecture must be a non-empty list of layer records, got {short_repr(architecture)}")
        layers = []
        for index, record in enumerate(architecture):
            where = f"architecture[{index}]"
            if not isinstance(record, dict):
                fail(f"{where} must be a layer record (an object with a type), got {short_repr(record)}")
            try:
                kind = layer_class(record).__name__
            except UnknownLayerError as exc:
                fail(f"{where} has {exc}")
            try:
                shapes = state_shapes(record)
            except (TypeError, ValueError, KeyError) as exc:
                fail(f"{where} ({kind}) does not build ({exc})")
            for name, shape in shapes.items():
                array = state.get(f"{index}.{name}")
                if array is None or tuple(array.shape) != shape:
                    fail(f"{where} ({kind}) needs parameter {index}.{name} of shape {shape}, the file has "
                         + ("none" if array is None else f"shape {tuple(array.shape)}"))
            try:
                layers.append(build_layer(record))
            except (TypeError, ValueError, KeyError) as exc:
                fail(f"{where} ({kind}) does not build ({exc})")
        model = cls(*layers).to("numpy", dtype=dtype)
        try:
            model.load_state_dict(state)
        except StateDictError as exc:
            fail(f"parameters do not fit the architecture ({exc})")
        return model.to(backend, device)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"
