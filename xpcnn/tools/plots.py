"""PNG plots (matplotlib, the 'plot' extra), each written atomically."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xpcnn.io.files import atomic_write


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> str:
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _as_picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """One (C, H, W) image for imshow: 3 channels as RGB (scaled to [0, 1] unless uint8), otherwise
    the first channel in grey."""
    if image.ndim == 3 and image.shape[0] == 3:
        rgb = image.transpose(1, 2, 0)
        if rgb.dtype != np.uint8:
            low, high = float(rgb.min()), float(rgb.max())
            rgb = (rgb - low) / (high - low) if high > low else np.zeros_like(rgb)
        return rgb, None
    return (image[0] if image.ndim == 3 else image), "gray"


def plot_run(metrics: dict, out: str, filters: np.ndarray | None = None, image: np.ndarray | None = None,
             feature_maps: np.ndarray | None = None) -> list[str]:
    """curves.png: the loss and validation accuracy of ``metrics`` (a run's metrics.json record);
    with ``filters`` (K, C, kh, kw), the first conv layer's weights, filters.png; with ``image``
    (C, H, W) and ``feature_maps`` (K, H', W'), that layer's output for it, feature_maps.png."""
    plt = _pyplot()
    history = metrics["history"]
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = metrics["step_losses"]
    left.plot(np.arange(1, len(steps) + 1) / max(1, len(steps) / max(1, len(epochs))), steps, lw=0.6, alpha=0.5,
              label="per step")
    left.plot(epochs, [h["loss"] for h in history], "o-", label="epoch mean")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    left.legend()
    if any(h["val_accuracy"] is not None for h in history):
        right.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", color="tab:green")
    right.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    paths = [_save(fig, os.path.join(out, "curves.png"))]
    if filters is None:
        return paths

    kernels = filters[:, 0] if filters.shape[1] != 3 else filters
    columns = min(8, len(kernels))
    rows = -(-len(kernels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, kernel in zip(axes.flat, kernels):
        if kernel.ndim == 3:  # an RGB filter, scaled to [0, 1]
            ax.imshow(_as_picture(kernel)[0])
        else:
            ax.imshow(kernel, cmap="RdBu_r", vmin=-np.abs(kernel).max(), vmax=np.abs(kernel).max())
    fig.suptitle("learned filters f (first conv layer)")
    paths.append(_save(fig, os.path.join(out, "filters.png")))
    if image is None or feature_maps is None:
        return paths

    fig, axes = plt.subplots(rows, columns + 1, figsize=(1.3 * (columns + 1), 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    picture, cmap = _as_picture(image)
    axes[0, 0].imshow(picture, cmap=cmap)
    axes[0, 0].set_title("X", fontsize=8)
    for index, fmap in enumerate(feature_maps):
        ax = axes[index // columns, 1 + index % columns]
        ax.imshow(fmap, cmap="viridis")
    fig.suptitle("feature maps Z1 = X * f of one image")
    paths.append(_save(fig, os.path.join(out, "feature_maps.png")))
    return paths


def plot_parity(report: dict, path: str) -> str:
    """Per-step loss of each backend, and each one's |difference| to the first."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    reference = np.array(report["backends"][0]["step_losses"])
    for run in report["backends"]:
        top.plot(run["step_losses"], lw=0.8, label=run["backend"])
    for run in report["backends"][1:]:
        diff = np.abs(np.array(run["step_losses"]) - reference)
        bottom.semilogy(np.maximum(diff, 1e-18), lw=0.8, label=f"{run['backend']} - {report['backends'][0]['backend']}")
    top.set(ylabel="training loss", title=f"parity {report['result']} ({report['dtype']})")
    bottom.set(xlabel="step", ylabel="|loss difference|")
    top.legend()
    bottom.legend()
    return _save(fig, path)


def plot_lockstep(report: dict, path: str) -> str:
    """Lockstep parity's heat map: for each target, step x layer, the ratio of its difference to the
    reference's own rounding (log colour scale; blank where a layer has nothing to compare, a red
    cross at the first failure)."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    comparisons = report["comparisons"]
    fig, axes = plt.subplots(len(comparisons), 1, figsize=(9, 2.2 + 1.8 * len(comparisons)), squeeze=False,
                             layout="constrained")
    top = max([report["threshold"] * 10] + [c["max_ratio"] for c in comparisons if np.isfinite(c["max_ratio"])])
    norm = LogNorm(vmin=1e-2, vmax=top)
    image = None
    for ax, comparison in zip(axes[:, 0], comparisons):
        heat = np.array([[np.nan if v is None else v for v in row] for row in comparison["heat"]], dtype=np.float64)
        heat = np.where(np.isinf(heat), top, heat)
        extent = (0.5, len(heat) + 0.5, len(report["layers"]) - 0.5, -0.5)  # steps counted from 1
        image = ax.imshow(np.maximum(heat.T, 1e-2), aspect="auto", norm=norm, cmap="viridis", interpolation="nearest",
                          extent=extent)
        ax.set_yticks(range(len(report["layers"])), report["layers"], fontsize=7)
        result = "PASS" if comparison["pass"] else "FAIL"
        ax.set_title(f"{comparison['target']} vs {comparison['against']}: {result}", fontsize=9)
        first = comparison["first_failure"]
        if first is not None and first["layer"] is not None:
            ax.plot(first["step"], first["layer"], "rx", markersize=9)
    axes[-1, 0].set_xlabel("step")
    if image is not None:
        bar = fig.colorbar(image, ax=axes[:, 0].tolist())
        bar.set_label(f"|difference| / reference's rounding (fail > {report['threshold']:g})")
    return _save(fig, path)
