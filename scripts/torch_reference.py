#!/usr/bin/env python
"""PyTorch reference: the same network trained with a standard recipe on the same split as xpcnn.
usage: python scripts/torch_reference.py DATA NET EPOCHS OPT [SEED]
  NET: lenet5 | small8; OPT: sgd (momentum 0.9, lr 0.01) | adam (lr 1e-3)"""
import sys

import numpy as np
import torch
from torch import nn

from xpcnn import data

path, net, epochs, opt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
torch.manual_seed(seed)
ds = data.load(path)
def t(split):
    return torch.from_numpy(split.images.astype(np.float32) / 255.0), torch.from_numpy(split.labels)
xtr, ytr = t(ds.train)
xte, yte = t(ds.test)
K = ds.classes
if net == "lenet5":
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, K))
else:  # conv16k3p1-relu-conv32k3p1-relu-maxpool2-flatten-dense
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, K))
optimizer = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if opt == "sgd"
             else torch.optim.Adam(model.parameters(), lr=1e-3))
loss_fn = nn.CrossEntropyLoss()
for epoch in range(epochs):
    model.train()
    for idx in torch.randperm(len(ytr)).split(64):
        optimizer.zero_grad()
        loss_fn(model(xtr[idx]), ytr[idx]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"epoch {epoch + 1}: test acc {100 * acc:.2f}%", flush=True)
print(f"{net} {opt} {epochs} epochs seed {seed}: test {100 * acc:.2f}% ({len(ytr)} training images)")
