"""fp32 or bf16, measured on the machine at hand: machines of one kind differ by up to 20x in
which is faster (the same training benchmark ran fp32 26.8 / bf16 3.0 img/s on one and 51.4 /
60.4 on another), so trainers and the app time both and keep the faster."""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device):
    """The context a step runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def time_precisions(step, device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Seconds per call of ``step(context)`` under fp32 and under bf16 autocast, each the best of
    ``repeats`` after one warm-up."""
    seconds = {}
    for precision in PRECISIONS:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            step(autocast(precision, device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        seconds[precision] = min(times[1:])
    return seconds


def choose_detail_precision(model, size: int = 256) -> dict[str, float]:
    """Set the precision in which ``model``'s detail head draws in eval (``DetailHead.precision``)
    to the faster of the two on one ``size`` x ``size`` slice; -> the seconds each took ({} for a
    model without a detail head). The head is most of the realistic decoder's cost (32 channels
    at full resolution); the rest of the decoder stays fp32."""
    head = getattr(model.decoder, "detail", None)
    if head is None:
        return {}
    device = next(head.parameters()).device
    image = torch.full((1, 1, size, size), 0.5, device=device)
    head.precision = "fp32"  # timed under the outer context alone
    was_training = head.training
    head.eval()

    def step(context):
        with torch.no_grad(), context:
            head(image)

    seconds = time_precisions(step, device, repeats=2)
    head.train(was_training)
    head.precision = min(seconds, key=seconds.get)
    return seconds
