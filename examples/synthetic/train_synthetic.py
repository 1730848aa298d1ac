"""Synthetic-data throughput job (ResNet-50 by default): measures images/s through `ctx`.

Inputs live on the device and never change, so the number is the training step's speed, not a
data loader's. Metrics go through `ctx.report` every `report_every` steps (cheap: no Ray Train
call), and one checkpoint at the end carries the measured throughput.
"""
import time

import torch
from torch import nn


def build(arch: str, classes: int) -> nn.Module:
    if arch == "tiny":  # for CPU tests of this example
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, classes))
    import torchvision

    return getattr(torchvision.models, arch)(num_classes=classes)


def train(ctx):
    cfg = ctx.config
    batch, size = cfg.get("batch_size", 256), cfg.get("image_size", 224)
    warmup, steps = cfg.get("warmup_steps", 10), cfg.get("steps", 50)
    cuda = ctx.device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    model = build(cfg.get("model", "resnet50"), 1000)
    if cuda:
        model = model.to(ctx.device, memory_format=torch.channels_last)
    model = ctx.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size, device=ctx.device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=ctx.device)
    use_bf16 = bool(cfg.get("bf16", True)) and cuda

    started = None
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.get("report_every", 10) == 0:
            ctx.report({"step": step, "loss": loss.item()})
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    images_per_sec = batch * steps * ctx.world_size / elapsed
    ctx.report({"step": warmup + steps, "images_per_sec": images_per_sec, "step_time_ms": 1000 * elapsed / steps},
               checkpoint={"steps": warmup + steps})
