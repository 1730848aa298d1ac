"""The record suite's training function (tests/record/): a seeded linear model on random data,
a few hundred microseconds an epoch. `config.fail_after_epochs: N` raises once the Nth epoch
(1-based) has been reported, from this file, so the failure's file:line is the user's."""
import torch


def train(ctx):
    cfg = ctx.config
    torch.manual_seed(cfg.get("seed", 0))
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.get("lr", 0.05))
    for epoch in range(cfg.get("epochs", 3)):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            opt.step()
        with torch.no_grad():
            full = torch.nn.functional.mse_loss(model(x), y).item()
        print(f"epoch {epoch + 1}: loss {full:.6f}", flush=True)
        ctx.report({"epoch": epoch, "loss": full})
        if epoch + 1 == cfg.get("fail_after_epochs"):
            raise ValueError(f"loss check failed after epoch {epoch + 1}")
