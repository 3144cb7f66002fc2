"""The one training loop (diffclip_lab/training/loop.py) on a model small enough to follow by hand: which
micro-batches make a step, the gradient and learning rate of each step, the counts and the log."""

import json
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from diffclip_lab.training.loop import train
from diffclip_lab.training.runs import BatchPlan, Run, prepare_training


class Numbers(torch.utils.data.Dataset):
    """x = 1, 2, ..., n in order (the loop sets the epoch; nothing here depends on it)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index + 1.0])

    def set_epoch(self, epoch: int) -> None:
        pass


def with_a_skipped_sample(rows: list[torch.Tensor]) -> dict:
    """A loader that reports one unreadable sample in every batch, as `image_text_loader` reports them."""
    return {"x": torch.stack(rows), "skipped": ["a (broken)"], "num_skipped": torch.tensor(1)}


def by_hand(samples: int, batch: int, accumulation: int, epochs: int, learning_rate: float, w: float) -> list:
    """SGD on the loss mean((w·x − 1)²) written out: an epoch's micro-batches in order, a step every `accumulation`
    of them and at the epoch's end, its gradient the sum of its micro-batches' over `accumulation` (Accelerate
    divides every micro-batch's loss by it); learning rate cosine from `learning_rate` to 0 over all the steps, no
    warm-up. Returns w after each step."""
    micro = [list(range(start + 1, min(start + batch, samples) + 1)) for start in range(0, samples, batch)]
    groups = [micro[i : i + accumulation] for i in range(0, len(micro), accumulation)] * epochs
    weights = []
    for index, group in enumerate(groups):
        gradient = sum(sum(2 * (w * x - 1) * x for x in xs) / len(xs) for xs in group) / accumulation
        w -= learning_rate * 0.5 * (1 + math.cos(math.pi * index / len(groups))) * gradient
        weights.append(w)
    return weights


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield Accelerator(cpu=True, gradient_accumulation_steps=2)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_accelerates_accumulation_steps_as_the_plan_counts_and_logs_every_step(accelerator, tmp_path):
    """10 samples in micro-batches of 2, 2 per step, the last smaller step of each epoch kept: 3 steps an epoch."""
    plan = BatchPlan.build(1, 2, 2, None, 10, None, 2, warmup_ratio=0.0, drop_last=False)
    assert (plan.steps_per_epoch, plan.max_steps) == (3, 6)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.1)
    data = Numbers(10)
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=with_a_skipped_sample)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = Run(accelerator, tmp_path, {})
    training = prepare_training(accelerator, run, model, optimizer, data, loader, plan, None)
    weights = []

    def step(batch):
        with accelerator.accumulate(training.module):
            loss = (training.module(batch["x"]) - 1).pow(2).mean()
            accelerator.backward(loss)
        return loss, {"w before the step": model.weight.detach()[0, 0].clone()}

    def after_step():
        weights.append(model.weight.item())

    loss = train(accelerator, training, plan, run, step, description="numbers", samples="numbers",
                 logging_steps=1, checkpointing_steps=None, after_step=after_step)  # fmt: skip
    assert weights == pytest.approx(by_hand(10, 2, 2, 2, 0.01, 0.1), rel=1e-5)
    assert loss == pytest.approx(((weights[4] * 9 - 1) ** 2 + (weights[4] * 10 - 1) ** 2) / 2, rel=1e-5)  # x = 9, 10
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4, 5, 6]
    assert [record["epoch"] for record in records] == [0, 0, 0, 1, 1, 1]
    assert [record["w before the step"] for record in records] == pytest.approx([0.1, *weights[:-1]], rel=1e-6)
    assert [record["skipped_samples"] for record in records] == [2, 4, 5, 7, 9, 10]  # one per micro-batch
    assert records[-1]["numbers_seen"] == training.state.images_seen == 6 * plan.global_batch_size - 10
    assert (training.state.global_step, training.state.skipped) == (6, 10)
