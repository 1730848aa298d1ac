"""A small CNN on scikit-learn's bundled 8x8 digits, trained with DDP through `ctx`.

The same function runs on Ray workers (`trainer submit torch.yaml`) and in-process
(`trainer run torch.yaml --local`).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from digits_data import CLASS_NAMES, PREPROCESSING, load_digits  # the shared data + split (same folder)


class DigitsCNN(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    model.train()
    return (pred == y).float().mean().item()


def train(ctx):
    cfg = ctx.config
    torch.manual_seed(cfg.get("seed", 0))
    (x_train, y_train), (x_test, y_test) = load_digits(ctx.data_path)
    loader = ctx.prepare_data_loader(DataLoader(
        TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        batch_size=cfg.get("batch_size", 64), shuffle=True))
    model = ctx.prepare_model(DigitsCNN(cfg.get("width", 16)))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.get("lr", 0.05), momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    plain = getattr(model, "module", model)  # the model without its DDP wrapper

    start = 0
    state = ctx.restore()
    if state is not None:  # resuming after a worker failure
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1

    x_eval = torch.from_numpy(x_test).to(ctx.device)
    y_eval = torch.from_numpy(y_test).to(ctx.device)
    for epoch in range(start, cfg.get("epochs", 10)):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(ctx.device), yb.to(ctx.device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
            count += len(xb)
        ctx.report(
            {"epoch": epoch, "loss": total / count, "accuracy": evaluate(model, x_eval, y_eval)},
            checkpoint={"model": plain.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch})

    ctx.report({"step": cfg.get("epochs", 10), "test_accuracy": evaluate(model, x_eval, y_eval)})
    ctx.save_model(plain, torch.from_numpy(x_test[:256]), labels=y_test[:256],
                   preprocessing=PREPROCESSING, class_names=CLASS_NAMES)
