"""Small real architectures and the digits data for the torch conversion tests."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class ResidualCNN(nn.Module):
    """Conv-BN-ReLU stem, two residual blocks (one strided with a 1x1 projection), GAP, linear."""

    def __init__(self, in_ch: int = 1, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU(),
                                    nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width))
        self.proj = nn.Conv2d(width, 2 * width, 1, stride=2, bias=False)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block1(h))
        h = torch.relu(self.proj(h) + self.block2(h))
        return self.head(h.mean(dim=(2, 3)))


class GRUClassifier(nn.Module):
    """Rows of an image as a sequence (N, T, C): 2-layer GRU, last step -> linear."""

    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.rnn = nn.GRU(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class LSTMClassifier(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


class UnsupportedOps(nn.Module):
    """Three ops with no ONNX translation in either exporter (torch 2.13): erfinv, i0, lgamma."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        return torch.erfinv(torch.tanh(h) * 0.5) + torch.special.i0(h) + torch.lgamma(h.abs() + 1)


def digits(seed: int = 0):
    """sklearn's bundled 8x8 digits as (N, 1, 8, 8) float32 in [0, 1], shuffled: train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def train_digits_cnn(epochs: int = 6, seed: int = 0) -> tuple[nn.Module, float]:
    """A DigitsCNN trained for a few seconds; returns (model in eval mode, test accuracy)."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: thread hand-offs cost more than they give
    (xtr, ytr), (xte, yte) = digits(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()
    torch.set_num_threads(threads)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    return model, acc


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so the export has to fold real numbers."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def save_exported(model: nn.Module, path, example: torch.Tensor):
    """`model` as a torch.export ExportedProgram (.pt2) with a dynamic batch: the code-free format
    `trainer convert` loads without --trust-pickle."""
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def with_outlier_channel(model: nn.Module, first: nn.Module, second: nn.Module, factor: float = 1000.0) -> nn.Module:
    """The same function, but `first`'s output channel 0 is `factor` times larger and `second`
    (which reads it, through ReLU / max-pool, both positively homogeneous) divides it back: the
    float model answers as before while that activation's range is `factor` times its other
    channels', so per-tensor int8 activations round every other channel to nothing."""
    with torch.no_grad():
        first.weight[0] *= factor
        if first.bias is not None:
            first.bias[0] *= factor
        second.weight[:, 0] /= factor
    return model.eval()


class DigitsRegressor(nn.Module):
    """A small MLP that predicts the digit's value as a number (one continuous output)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                 nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)


def train_digits_regressor(epochs: int = 60, seed: int = 0) -> tuple[nn.Module, float]:
    """DigitsRegressor trained with MSE on the digit value; returns (model, test RMSE)."""
    torch.manual_seed(seed)
    (xtr, ytr), (xte, yte) = digits(seed)
    model = DigitsRegressor()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.float32))[:, None]
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.mse_loss(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        rmse = float(np.sqrt(np.mean((model(torch.from_numpy(xte)).numpy()[:, 0] - yte) ** 2)))
    return model, rmse


class TwoHeads(nn.Module):
    """A detector-shaped model: a shared trunk, a `boxes` regression head (4 numbers) and a
    `scores` class head; returns a dict, so its ONNX outputs are named boxes and scores."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.boxes = nn.Linear(32, 4)
        self.scores = nn.Linear(32, 10)

    def forward(self, x):
        h = self.trunk(x)
        return {"boxes": self.boxes(h), "scores": self.scores(h)}
