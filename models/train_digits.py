"""Train the project's small digits CNN and export it to ONNX with its held-out set.

Writes ``models/digits_cnn.onnx`` and ``models/digits_eval.npz`` next to this script, then scores
the exported model with onnxruntime. The network is small but deliberately holds every structure
the pruning pass must handle (residual Add, depthwise + pointwise, squeeze-and-excitation, Concat,
HardSwish/SiLU, Gemm head), and BatchNorm is kept unfolded so the simplify pass has work to do.

Usage::

    pip install -e '.[train]'
    python models/train_digits.py
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path

# Must be set before torch touches BLAS/cuBLAS so kernels pick deterministic paths.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_cnn.onnx"
EVAL_PATH = HERE / "digits_eval.npz"
SEED = 0
EPOCHS = 40
BATCH = 64
OPSET = 17


def conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    """Two conv+BN with an identity shortcut: the Add couples both convs' output channels."""

    def __init__(self, ch: int):
        super().__init__()
        self.a, self.b = conv_bn(ch, ch, 3), conv_bn(ch, ch, 3)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid -> Mul."""

    def __init__(self, ch: int, hidden: int):
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.down, self.up = nn.Conv2d(ch, hidden, 1), nn.Conv2d(hidden, ch, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.up(torch.relu(self.down(self.squeeze(x)))))


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 16, 3)
        self.res = Residual(16)
        self.dw = conv_bn(16, 16, 3, groups=16)  # depthwise: groups == channels
        self.pw = conv_bn(16, 32, 1)  # pointwise
        self.se = SqueezeExcite(32, 8)
        self.branch_a = conv_bn(32, 16, 1)
        self.branch_b = conv_bn(32, 16, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.res(torch.relu(self.stem(x)))
        x = torch.relu(self.pw(nn.functional.hardswish(self.dw(x))))
        x = self.se(x)
        x = torch.cat([torch.relu(self.branch_a(x)), nn.functional.silu(self.branch_b(x))], dim=1)
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_split():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    gen = torch.Generator().manual_seed(SEED)  # own generator: shuffling independent of init draws
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def export(model: nn.Module, path: Path = ONNX_PATH, input_shape: tuple[int, ...] = (1, 1, 8, 8)) -> None:
    """Export to ``path`` (opset OPSET, dynamic batch, BatchNormalization kept) and check the file."""
    dummy = torch.zeros(*input_shape)
    # TorchScript exporter; TrainingMode.PRESERVE on an eval()-mode model keeps BatchNormalization
    # nodes (EVAL would fuse them into the convs, and folding BN is the simplify pass's job).
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (no onnxscript needed); its notice is noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        )
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def onnx_accuracy(x: np.ndarray, y: np.ndarray, path: Path = ONNX_PATH) -> float:
    """Top-1 accuracy of the exported file at ``path`` with onnxruntime, one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    seed_everything(SEED)
    x_train, x_test, y_train, y_test = load_split()
    model = DigitsCNN()
    start = time.perf_counter()
    train(model, x_train, y_train)
    print(f"trained {EPOCHS} epochs in {time.perf_counter() - start:.1f}s")
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    export(model)
    np.savez(EVAL_PATH, input=x_test, labels=y_test)
    params = sum(p.numel() for p in model.parameters())
    print(f"params: {params}  torch held-out acc: {torch_acc:.4f}  N={len(y_test)}")
    print(f"onnx held-out accuracy: {onnx_accuracy(x_test, y_test):.4f}")


if __name__ == "__main__":
    main()
