"""Small example networks for the examples, the CLI demo and the tests.

* `SmallCNN` — the Core ML Tools pruning tutorial's network shape (two conv/BN/ReLU/max-pool
  blocks, then two linear layers), sized by the input image so it works on 8×8 digits and 28×28 MNIST.
* `MLP` — flatten, then fully connected layers with ReLU.

Both take ``[N, C, H, W]`` float images and return ``[N, num_classes]`` logits. `train_epoch`
is the plain training loop the examples share (for accuracy, see `sparsify.analysis.sensitivity.accuracy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "SmallCNN", "train_epoch"]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: allowed an integer >= 1")
    return value


class SmallCNN(nn.Sequential):
    """``conv → BN → ReLU → pool`` twice, then ``linear → ReLU → dropout → linear``.

    Args:
        image_shape: ``(channels, height, width)`` of the input; height and width must be ≥ 4
            (each of the two max-pools halves them).
        num_classes: number of output logits.
        channels: output channels of the two conv layers.
        hidden: width of the hidden linear layer.
        dropout: dropout probability before the last layer.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.25,
    ) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"image_shape={tuple(image_shape)!r} is invalid: allowed (channels, height, width)")
        in_channels, height, width = (_positive("image_shape", int(v)) for v in image_shape)
        if height < 4 or width < 4:
            raise ValueError(f"image_shape={tuple(image_shape)!r} is invalid: height and width must be >= 4")
        c1, c2 = (_positive("channels", c) for c in channels)
        super().__init__(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (height // 4) * (width // 4), _positive("hidden", hidden)),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, _positive("num_classes", num_classes)),
        )


class MLP(nn.Sequential):
    """``flatten → (linear → ReLU) × len(hidden) → linear``.

    Args:
        image_shape: ``(channels, height, width)`` of the input (any shape whose product is the width).
        num_classes: number of output logits.
        hidden: widths of the hidden layers.
    """

    def __init__(
        self, image_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, hidden: Sequence[int] = (256, 128)
    ) -> None:
        width = 1
        for v in image_shape:
            width *= _positive("image_shape", int(v))
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, _positive("hidden", h)), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, _positive("num_classes", num_classes)))
        super().__init__(*layers)


# -- the training loop shared by the examples ----------------------------------------------------


def train_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    after_step: Callable[[], None] | None = None,
) -> float:
    """One pass of cross-entropy training over ``loader``; returns the mean loss.

    ``after_step`` runs after every optimizer step — pass ``pruner.step`` to advance a pruning
    schedule once per batch, as Core ML Tools' training loops do.
    """
    model.train()
    total_loss, batches = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total_loss += loss.item()
        batches += 1
    return total_loss / max(batches, 1)
