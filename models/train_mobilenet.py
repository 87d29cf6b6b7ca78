"""Train the project's MobileNet-style classifier and export it to ONNX with its held-out set.

Writes ``models/mobilenet_digits.onnx`` and ``models/mobilenet_digits_eval.npz`` next to this
script, then scores the exported model with onnxruntime. The data are scikit-learn's
``load_digits()`` (shipped inside the package: nothing is downloaded), upscaled from 8x8 to 32x32
with deterministic augmentation (shifts, small rotations and scalings, noise). The network is a
small MobileNetV2: inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection)
with identity shortcuts [Add], ReLU6 early and HardSwish late, BatchNorm kept unfolded, a Gemm
head. Unlike ``digits_cnn.onnx`` it is big enough (about 1 ms at batch 1 on one thread) that int8
and channel pruning change its latency, so the tuner's Pareto front has something to show.

Usage::

    pip install -e '.[train]'
    python models/train_mobilenet.py
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

# Must be set before torch touches BLAS/cuBLAS so kernels pick deterministic paths.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

# seeding, export and ONNX scoring are the digits script's (this folder is on sys.path when run)
from train_digits import export, onnx_accuracy, seed_everything  # noqa: E402

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "mobilenet_digits.onnx"
EVAL_PATH = HERE / "mobilenet_digits_eval.npz"
SEED = 0
EPOCHS = 10
BATCH = 64
SIZE = 32  # input side; the 8x8 digit is upscaled to DIGIT px and centred in SIZE x SIZE
DIGIT = 24

# (expansion t, output channels c, repeats n, first stride s, activation): MobileNetV2's table,
# shrunk for 32x32 inputs. Every stage after the first repeats, so it has a residual Add.
STAGES = [
    (1, 24, 1, 1, "relu6"),
    (6, 32, 2, 2, "relu6"),
    (6, 64, 2, 2, "hardswish"),
    (6, 128, 2, 1, "hardswish"),
]
STEM, LAST = 32, 512


def act(name: str) -> nn.Module:
    return nn.ReLU6() if name == "relu6" else nn.Hardswish()


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class InvertedResidual(nn.Module):
    """1x1 expand + act, 3x3 depthwise (groups == channels) + act, 1x1 linear projection; identity
    shortcut [Add] when the block keeps shape, which couples the projections' output channels."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, activation: str):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), act(activation)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), act(activation)]
        layers += conv_bn(hidden, cout, 1)  # linear bottleneck: no activation
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetDigits(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(1, STEM, 3), nn.ReLU6()]
        cin = STEM
        for t, c, n, s, a in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t, a))
                cin = c
        layers += [*conv_bn(cin, LAST, 1), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(LAST, 10)  # [Gemm]

    def forward(self, x):
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def upscale(images: np.ndarray) -> torch.Tensor:
    """8x8 digits in [0, 16] -> [N, 1, SIZE, SIZE] in [0, 1]: bilinear to DIGIT px, zero border."""
    x = torch.from_numpy((images / 16.0).astype(np.float32))[:, None]
    x = F.interpolate(x, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    pad = (SIZE - DIGIT) // 2
    return F.pad(x, (pad, SIZE - DIGIT - pad, pad, SIZE - DIGIT - pad))


def augment(x: torch.Tensor, gen: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """Random affine (rotation +-12 deg, scale 0.9-1.1, shift +-3 px) and Gaussian noise, drawn from
    ``gen`` only, so the augmented set depends on the seed and nothing else."""
    n = len(x)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.2
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (3 * 2 / SIZE)  # in [-1, 1] grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out + noise * torch.randn(out.shape, generator=gen)
    return out.clamp(0.0, 1.0)


def to_8bit(x: torch.Tensor) -> np.ndarray:
    """Round to 8-bit grey levels (k/255), as a camera image would be; compresses well in the npz."""
    return (torch.round(x * 255.0) / 255.0).numpy().astype(np.float32)


def load_split():
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target.astype(np.int64), test_size=0.25, stratify=digits.target, random_state=0
    )
    # The held-out set is augmented once with its own generator (fixed), so it is harder than the
    # clean upscaled digits and independent of the training draws.
    test = to_8bit(augment(upscale(x_test), torch.Generator().manual_seed(SEED + 1), noise=0.03))
    return upscale(x_train), test, y_train, y_test


def train(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> None:
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    steps = EPOCHS * math.ceil(len(x) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(SEED)  # own generator: shuffling and augmentation independent of init
    model.train()
    for _ in range(EPOCHS):
        with torch.no_grad():
            xa = augment(x, gen)  # a fresh augmentation of the whole training set each epoch
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xa[idx]), yt[idx], label_smoothing=0.05).backward()
            opt.step()
            sched.step()
    model.eval()


def main() -> None:
    seed_everything(SEED)
    x_train, x_test, y_train, y_test = load_split()
    model = MobileNetDigits()
    start = time.perf_counter()
    train(model, x_train, y_train)
    print(f"trained {EPOCHS} epochs in {time.perf_counter() - start:.1f}s")
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    export(model, ONNX_PATH, (1, 1, SIZE, SIZE))
    np.savez_compressed(EVAL_PATH, input=x_test, labels=y_test)
    params = sum(p.numel() for p in model.parameters())
    print(f"params: {params}  torch held-out acc: {torch_acc:.4f}  N={len(y_test)}")
    print(f"onnx held-out accuracy: {onnx_accuracy(x_test, y_test, ONNX_PATH):.4f}")


if __name__ == "__main__":
    main()
