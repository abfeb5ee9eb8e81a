#!/usr/bin/env python3
"""A fedmesh external trainer in PyTorch: the same MLP as examples/numpy-trainer (fedmesh's
built-in layout fc1, fc2, ...; ReLU; softmax cross-entropy; SGD with momentum and weight decay),
written with torch.nn and torch.optim. Needs `pip install torch safetensors numpy`.

fedmesh runs it once per round (FEDMESH_MODE=train) and once per evaluation (FEDMESH_MODE=evaluate);
see examples/numpy-trainer/README.md for the environment.
"""

import json
import os
import re
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file


class Mlp(torch.nn.Module):
    """Linear layers named fc1, fc2, ... so that state_dict names match fedmesh's layout."""

    def __init__(self, state):
        super().__init__()
        numbers = sorted(int(m.group(1)) for n in state if (m := re.fullmatch(r"fc(\d+)\.weight", n)))
        if not numbers:
            raise ValueError("no tensors named fcN.weight: this trainer trains fedmesh's MLP layout")
        self.names = [f"fc{k}" for k in numbers]
        for name in self.names:
            out_features, in_features = state[f"{name}.weight"].shape
            setattr(self, name, torch.nn.Linear(in_features, out_features))
        self.load_state_dict(state)

    def forward(self, x):
        for index, name in enumerate(self.names):
            x = getattr(self, name)(x)
            if index + 1 < len(self.names):
                x = torch.relu(x)
        return x


def load_split(name):
    folder = os.environ["FEDMESH_DATA_DIR"]
    x = np.load(os.path.join(folder, f"{name}_x.npy")).astype(np.float32)
    y = np.load(os.path.join(folder, f"{name}_y.npy")).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def train(model, x, y, hp, seed):
    mu = float(hp.get("fedprox_mu", 0.0))
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp.get("momentum", 0.0),
                                weight_decay=hp.get("weight_decay", 0.0))
    generator = torch.Generator().manual_seed(seed)
    batch, loss = int(hp["batch_size"]), 0.0
    for _ in range(int(hp["local_epochs"])):
        order, total = torch.randperm(len(y), generator=generator), 0.0
        for start in range(0, len(y), batch):
            rows = order[start:start + batch]
            optimizer.zero_grad()
            batch_loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            objective = batch_loss
            if mu > 0:
                objective = objective + mu / 2 * sum(((p - a) ** 2).sum()
                                                     for p, a in zip(model.parameters(), anchor))
            objective.backward()
            optimizer.step()
            total += float(batch_loss) * len(rows)
        loss = total / max(len(y), 1)
    return loss


@torch.no_grad()
def evaluate(model, x, y):
    logits = model(x)
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean()) if len(y) else 0.0
    return loss, accuracy


def main():
    mode = os.environ.get("FEDMESH_MODE", "train")
    model = Mlp(load_file(os.environ["FEDMESH_INPUT_WEIGHTS"]))
    if mode == "evaluate":
        x, y = load_split("test")
        loss, accuracy = evaluate(model, x, y)
        metrics = {"samples": len(y), "loss": loss, "accuracy": accuracy}
    else:
        hp = json.loads(os.environ["FEDMESH_HYPERPARAMETERS"])
        x, y = load_split("train")
        seed = (int(hp.get("seed", 0)) ^ (int(os.environ["FEDMESH_ROUND"]) * 0x9E37)) % (2 ** 63)
        loss = train(model, x, y, hp, seed)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, os.environ["FEDMESH_OUTPUT_WEIGHTS"])
        metrics = {"samples": len(y), "loss": loss}
    with open(os.environ["FEDMESH_METRICS"], "w") as f:
        json.dump(metrics, f)
    print(f"{mode} round {os.environ.get('FEDMESH_ROUND')}: {metrics}", file=sys.stderr)


if __name__ == "__main__":
    main()
