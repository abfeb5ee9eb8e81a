#!/usr/bin/env python3
"""A fedmesh external trainer in NumPy only: the MLP of fedmesh's built-in learner (ReLU hidden
layers, softmax cross-entropy, minibatch SGD with momentum and weight decay), with the same math, so
a federation trained with it reaches the built-in accuracy.

fedmesh runs it once per round and once per evaluation (see README.md beside this file for the
environment). It reads the global weights from FEDMESH_INPUT_WEIGHTS (safetensors), trains on the
node's training split in FEDMESH_DATA_DIR and writes FEDMESH_OUTPUT_WEIGHTS and FEDMESH_METRICS; in
evaluate mode it only writes the metrics of the input weights on the test split.
"""

import json
import os
import re
import struct
import sys

import numpy as np


# --- safetensors, read and written with NumPy alone (the format is a JSON header and raw bytes) ---

def load_safetensors(path):
    """The tensors of a safetensors file, by name, as float32 arrays."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"]).copy()
    return tensors


def save_safetensors(path, tensors):
    """Writes float32 tensors (name -> array) as a safetensors file."""
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


# --- the MLP: layers fc1, fc2, ... with weight [out, in] and bias [out] ---

def layers_of(tensors):
    """[(weight, bias)] in layer order, from tensors named fcN.weight and fcN.bias."""
    numbers = sorted({int(m.group(1)) for n in tensors if (m := re.fullmatch(r"fc(\d+)\.weight", n))})
    if not numbers:
        raise ValueError("no tensors named fcN.weight: this trainer trains fedmesh's MLP layout")
    return [(tensors[f"fc{k}.weight"], tensors[f"fc{k}.bias"]) for k in numbers]


def forward(layers, x):
    """Every layer's input, and the logits last."""
    activations = [x]
    for index, (weight, bias) in enumerate(layers):
        z = activations[-1] @ weight.T + bias
        activations.append(np.maximum(z, 0) if index + 1 < len(layers) else z)
    return activations


def softmax_loss(logits, labels):
    """Summed cross-entropy and the gradient (softmax - onehot) / n."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = float((np.log(total[:, 0]) - shifted[np.arange(len(labels)), labels]).sum())
    gradient = exp / total
    gradient[np.arange(len(labels)), labels] -= 1.0
    return loss, gradient / len(labels)


def backward(layers, activations, delta):
    """[(weight gradient, bias gradient)] from the gradient at the logits."""
    grads = [None] * len(layers)
    for index in reversed(range(len(layers))):
        weight, _ = layers[index]
        grads[index] = (delta.T @ activations[index], delta.sum(axis=0))
        if index > 0:
            delta = (delta @ weight) * (activations[index] > 0)
    return grads


def train(layers, x, y, hp, seed):
    """Local epochs of minibatch SGD; returns the mean loss of the last epoch."""
    lr, momentum = np.float32(hp["lr"]), np.float32(hp.get("momentum", 0.0))
    decay, mu = np.float32(hp.get("weight_decay", 0.0)), np.float32(hp.get("fedprox_mu", 0.0))
    anchor = [(w.copy(), b.copy()) for w, b in layers]
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in layers]
    rng = np.random.default_rng(seed)
    batch, loss = int(hp["batch_size"]), 0.0
    for _ in range(int(hp["local_epochs"])):
        order, total = rng.permutation(len(y)), 0.0
        for start in range(0, len(y), batch):
            rows = order[start:start + batch]
            activations = forward(layers, x[rows])
            batch_loss, delta = softmax_loss(activations[-1], y[rows])
            total += batch_loss
            grads = backward(layers, activations, delta)
            for index, ((w, b), (gw, gb)) in enumerate(zip(layers, grads)):
                for param, grad, pull, vel in ((w, gw, anchor[index][0], velocity[index][0]),
                                               (b, gb, anchor[index][1], velocity[index][1])):
                    step = grad + decay * param
                    if mu > 0:
                        step += mu * (param - pull)
                    if momentum > 0:
                        vel *= momentum
                        vel += step
                        step = vel
                    param -= lr * step
        loss = total / max(len(y), 1)
    return loss


def evaluate(layers, x, y):
    logits = forward(layers, x)[-1]
    loss, _ = softmax_loss(logits, y)
    accuracy = float((logits.argmax(axis=1) == y).mean()) if len(y) else 0.0
    return loss / max(len(y), 1), accuracy


def load_split(name):
    folder = os.environ["FEDMESH_DATA_DIR"]
    x = np.load(os.path.join(folder, f"{name}_x.npy")).astype(np.float32)
    y = np.load(os.path.join(folder, f"{name}_y.npy")).astype(np.int64)
    return x, y


def main():
    mode = os.environ.get("FEDMESH_MODE", "train")
    tensors = load_safetensors(os.environ["FEDMESH_INPUT_WEIGHTS"])
    layers = layers_of(tensors)
    if mode == "evaluate":
        x, y = load_split("test")
        loss, accuracy = evaluate(layers, x, y)
        metrics = {"samples": len(y), "loss": loss, "accuracy": accuracy}
    else:
        hp = json.loads(os.environ["FEDMESH_HYPERPARAMETERS"])
        x, y = load_split("train")
        round_number = int(os.environ["FEDMESH_ROUND"])
        seed = (int(hp.get("seed", 0)) ^ (round_number * 0x9E37)) & 0xFFFFFFFFFFFFFFFF
        loss = train(layers, x, y, hp, seed)
        save_safetensors(os.environ["FEDMESH_OUTPUT_WEIGHTS"], tensors)
        metrics = {"samples": len(y), "loss": loss}
    with open(os.environ["FEDMESH_METRICS"], "w") as f:
        json.dump(metrics, f)
    print(f"{mode} round {os.environ.get('FEDMESH_ROUND')}: {metrics}", file=sys.stderr)


if __name__ == "__main__":
    main()
