"""Your own training loop and metric, searched by autoprune: a task (see autoprune.data._task).

The data (scikit-learn's 8x8 digits, bundled), the loop (random shifts as augmentation, label
smoothing, SGD with momentum under a one-cycle schedule) and the metric (macro-F1, in percent)
are this file's own; autoprune only asks it to fine-tune and to evaluate.

    autoprune search examples/own_loop.toml --task examples/own_loop.py:task
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import nn


class DigitsF1:
    metric = "macro-F1"
    num_classes = 10

    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0 - 0.5).astype(np.float32).reshape(-1, 1, 8, 8)
        x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=0.15, random_state=0, stratify=y_rest
        )
        self.data = {
            name: (torch.from_numpy(a), torch.from_numpy(b).long())
            for name, a, b in (("train", x_train, y_train), ("val", x_val, y_val), ("test", x_test, y_test))
        }
        self.sizes = {name: len(b) for name, (_, b) in self.data.items()}

    def example_input(self) -> torch.Tensor:
        return self.data["train"][0][:1]

    def finetune(self, model: nn.Module, budget, report) -> None:
        x, y = self.data["train"]
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(budget.seed)
        per_epoch = -(-len(y) // budget.batch_size)
        if budget.max_batches is not None:
            per_epoch = min(per_epoch, budget.max_batches)
        optimizer = torch.optim.SGD(model.parameters(), lr=budget.lr * 50, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=budget.lr * 50, total_steps=max(1, budget.epochs * per_epoch)
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        for epoch in range(1, budget.epochs + 1):
            model.train()
            order = torch.randperm(len(y), generator=generator)
            for b in range(per_epoch):
                idx = order[b * budget.batch_size : (b + 1) * budget.batch_size]
                shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
                xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))  # augmentation: a one-pixel shift
                loss = loss_fn(model(xb.to(device)), y[idx].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            report(epoch, self.evaluate(model, "val"))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> float:
        x, y = self.data[split]
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        predicted = model(x.to(device)).argmax(1).cpu().numpy()
        model.train(was_training)
        return 100.0 * f1_score(y.numpy(), predicted, average="macro")


def task() -> DigitsF1:
    return DigitsF1()
