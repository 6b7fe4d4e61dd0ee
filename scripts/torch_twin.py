"""PyTorch's own twin of an xpcnn network, layer for layer, and an epoch of each on the same images.

``twin(model)`` builds a ``torch.nn.Module`` with the same architecture as an xpcnn ``Sequential``
(convolutions with their stride, padding, dilation and groups; pooling; batch normalisation;
residual blocks; dense layers; activations; dropout) and the same starting weights, so that the
parameter counts can be printed side by side and the two trained on the same data::

    python scripts/torch_twin.py --preset resnet20 --data runs/colour_digits.npz --epochs 1

trains the preset for ``--epochs`` with xpcnn's default command (``scripts/train.py``: the executor
and threads it picks) and then PyTorch's twin with PyTorch's defaults (all cores) on the same
training images, normalisation, batch size, optimizer and learning-rate schedule (no augmentation
on either side, ``--shift 0``), and prints each epoch's time and the final test accuracy.  Timing only: the
batch orders and dropout masks differ, so the runs are not a parity check (``--compare`` is).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpcnn import data  # noqa: E402
from xpcnn.backends import to_numpy  # noqa: E402
from xpcnn.data.transforms import stored_normalization  # noqa: E402
from xpcnn.nn import Sequential  # noqa: E402
from xpcnn.training import PRESETS, build_model  # noqa: E402
from xpcnn.training.schedules import Clock, schedule_from_config  # noqa: E402

SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _tensor(torch: Any, array: Any) -> Any:
    return torch.from_numpy(np.ascontiguousarray(to_numpy(array), dtype=np.float32))


def _conv(torch: Any, layer: Any) -> Any:
    cfg = layer.config()
    kernel, dilation = _pair(cfg["kernel_size"]), _pair(cfg.get("dilation", 1))
    padding = cfg.get("padding", 0)
    if padding == "same":  # xpcnn's "same": symmetric d*(k-1)/2 per axis, whatever the stride
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    conv = torch.nn.Conv2d(cfg["in_channels"], cfg["out_channels"], kernel, stride=_pair(cfg.get("stride", 1)),
                           padding=_pair(padding), dilation=dilation, groups=cfg.get("groups", 1),
                           bias=cfg.get("bias", True))
    conv.weight.data = _tensor(torch, layer.params["weight"])
    if conv.bias is not None:
        conv.bias.data = _tensor(torch, layer.params["bias"])
    return conv


def _batch_norm(torch: Any, layer: Any) -> Any:
    cfg = layer.config()
    size = cfg.get("channels", cfg.get("features"))
    cls = torch.nn.BatchNorm2d if layer.name == "BatchNorm2D" else torch.nn.BatchNorm1d
    norm = cls(size, eps=cfg.get("eps", 1e-5), momentum=cfg.get("momentum", 0.1), affine=cfg.get("affine", True))
    if norm.affine:
        norm.weight.data, norm.bias.data = _tensor(torch, layer.params["weight"]), _tensor(torch, layer.params["bias"])
    return norm


class _Residual:
    """Y = body(X) + shortcut(X), the shortcut the identity when there is none."""

    @staticmethod
    def make(torch: Any, body: Any, shortcut: Any) -> Any:
        class Residual(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body, self.shortcut = body, shortcut

            def forward(self, x: Any) -> Any:
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

        return Residual()


def _layer(torch: Any, layer: Any) -> Any:
    nn, cfg, kind = torch.nn, layer.config(), layer.name
    if kind == "Conv2D":
        return _conv(torch, layer)
    if kind == "Dense":
        dense = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
        dense.weight.data = _tensor(torch, layer.params["weight"]).T.contiguous()  # xpcnn's W is (in, out)
        if dense.bias is not None:
            dense.bias.data = _tensor(torch, layer.params["bias"])
        return dense
    if kind in ("BatchNorm2D", "BatchNorm1D"):
        return _batch_norm(torch, layer)
    if kind in ("MaxPool2D", "AvgPool2D"):
        cls = nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d
        return cls(_pair(cfg["kernel_size"]), stride=_pair(cfg["stride"]), padding=_pair(cfg.get("padding", 0)),
                   ceil_mode=cfg.get("ceil_mode", False))
    if kind == "GlobalAvgPool2D":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "Residual":
        shortcut = None if layer.shortcut is None else twin(layer.shortcut)
        return _Residual.make(torch, twin(layer.body), shortcut)
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Flatten": nn.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "LeakyReLU":
        return nn.LeakyReLU(cfg.get("negative_slope", 0.01))
    if kind == "GELU":
        return nn.GELU(approximate="tanh")
    if kind == "Dropout":
        return nn.Dropout(cfg["p"])
    raise ValueError(f"torch_twin: no PyTorch twin for layer {kind}")


def twin(model: Any) -> Any:
    """PyTorch's ``nn.Sequential`` with ``model``'s layers and starting weights (float32)."""
    import torch

    layers = model.layers if isinstance(model, Sequential) else list(model)
    return torch.nn.Sequential(*(_layer(torch, layer) for layer in layers))


def parameter_count(model: Sequential) -> int:
    return sum(int(np.prod(value.shape)) for _, value in model.named_parameters())


def torch_optimizer(net: Any, config: Any) -> Any:
    """PyTorch's optimizer for a config's recipe, as xpcnn's ``build_optimizer`` builds it: adam (weight
    decay as L2), adamw (decoupled), else SGD with the recipe's momentum (none for ``sgd``)."""
    import torch

    if config.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return cls(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    momentum = config.momentum if config.optimizer == "momentum" else 0.0
    return torch.optim.SGD(net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                           momentum=momentum, nesterov=config.nesterov)


def torch_epochs(net: Any, train: Any, test: Any, config: Any, normalize: Any, epochs: int,
                 device: str = "cpu") -> tuple[list, float]:
    """Train PyTorch's twin like xpcnn's recipe (without augmentation); (epoch seconds, test accuracy)."""
    import torch

    net = net.to(device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    mean, std = (np.zeros(1), np.ones(1)) if normalize is None else normalize

    def batch(images: np.ndarray) -> Any:
        x = images.astype(np.float32) / 255.0
        x = (x - mean.astype(np.float32)[None, :, None, None]) / std.astype(np.float32)[None, :, None, None]
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)

    optimizer = torch_optimizer(net, config)
    schedule = schedule_from_config(config)  # xpcnn's own rates, step by step (no plateau here)
    loss_fn, seconds, rng = torch.nn.CrossEntropyLoss(), [], np.random.default_rng(0)
    labels = torch.from_numpy(train.labels.astype(np.int64)).to(device)
    steps = -(-len(train) // config.batch_size)
    for epoch in range(epochs):
        net.train()
        started = time.perf_counter()
        order = rng.permutation(len(train))
        for step, start in enumerate(range(0, len(order), config.batch_size)):
            for group in optimizer.param_groups:
                group["lr"] = schedule(Clock(epoch, step, steps, epochs))
            index = order[start:start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch(train.images[index])), labels[index])
            loss.backward()
            optimizer.step()
        synchronize()
        seconds.append(time.perf_counter() - started)
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 500):
            predicted = net(batch(test.images[start:start + 500])).argmax(dim=1).cpu().numpy()
            correct += int((predicted == test.labels[start:start + 500]).sum())
    return seconds, correct / len(test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="resnet20", choices=sorted(PRESETS))
    parser.add_argument("--model", help="a --model spec instead of the preset's network")
    parser.add_argument("--data", required=True,
                        help="a dataset (e.g. scripts/colour_digits.py's); its test split, else its validation split, "
                             "gives the accuracies")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: xpcnn on CuPy and PyTorch on the GPU")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--out", help="folder for xpcnn's run (default: a temporary one)")
    args = parser.parse_args(argv)
    dataset = data.load(args.data)
    evaluation = dataset.test if dataset.test is not None else dataset.validation
    if evaluation is None:
        parser.error(f"--data: {args.data} has neither a test nor a validation split")
    out = args.out or tempfile.mkdtemp(prefix="twin-")
    flags = ["--data", args.data, "--preset", args.preset, "--epochs", str(args.epochs), "--shift", "0",
             "--out", out, "--quiet", "--device", args.device]
    flags += ["--eval-data", args.data] if dataset.test is not None else []
    flags += ["--model", args.model] if args.model else []
    flags += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    print("xpcnn:", " ".join(["python scripts/train.py", *flags]), flush=True)
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "train.py"), *flags], check=False)
    if done.returncode:
        return done.returncode
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    from xpcnn.training.snapshot import read

    saved = read(os.path.join(out, "checkpoint.npz"))
    config = saved.config
    model = build_model(config)  # the run's starting weights (the seed's)
    import torch

    net = twin(model)
    normalize = stored_normalization(saved.normalization)
    train = dataset.train.take(config.train_count) if config.train_count else dataset.train
    seconds, accuracy = torch_epochs(net, train, evaluation, config, normalize, args.epochs, args.device)
    torch_count = sum(p.numel() for p in net.parameters())
    xpcnn_seconds = [record["seconds"] for record in metrics["history"]]
    print(f"parameters: xpcnn {parameter_count(model):,}, PyTorch {torch_count:,}")
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"PyTorch on {where}; batch {config.batch_size}; {len(train)} training images")
    for epoch, (ours, theirs) in enumerate(zip(xpcnn_seconds, seconds), start=1):
        print(f"epoch {epoch}: xpcnn {ours:.1f} s, PyTorch {theirs:.1f} s "
              f"(xpcnn / PyTorch time {ours / theirs:.2f}x)")
    ours = metrics["final"]["accuracy"]
    split = "test" if dataset.test is not None else "validation"
    print(f"{split} accuracy after {args.epochs} epoch(s): xpcnn {ours:.4f}, PyTorch {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
