"""PyTorch families: a small CNN for square images given as flat pixels, and an MLP
for any tabular data. Seeded and deterministic; early stopping on validation loss.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import TrainingError
from pipelines.config import Train
from pipelines.models import (
    INPUT_NAME,
    OUTPUT_NAME,
    Epoch,
    EpochCallback,
    Fitted,
    strip_debug_info,
)

log = logging.getLogger(__name__)


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics, baked into the graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CNN(nn.Module):
    arch: dict[str, Any]

    def __init__(self, n_features: int, n_classes: int, arch: dict[str, Any]) -> None:
        super().__init__()
        h, w = arch["image_shape"]
        if h * w != n_features:
            raise TrainingError(
                f"train.cnn.image_shape {h}x{w} needs {h * w} features, the data has {n_features}; "
                "use train.model: mlp for tabular data"
            )
        c1, c2 = arch["channels"]
        self.shape = (h, w)
        self.scale = Standardize(torch.zeros(n_features), torch.ones(n_features))
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(arch["dropout"]),
            nn.Linear(c2 * (h // 2) * (w // 2), n_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.scale(features).reshape(-1, 1, *self.shape)
        return self.body(x)


class MLP(nn.Module):
    arch: dict[str, Any]

    def __init__(self, n_features: int, n_classes: int, arch: dict[str, Any]) -> None:
        super().__init__()
        self.scale = Standardize(torch.zeros(n_features), torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for hidden in arch["hidden"]:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(arch["dropout"])]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(self.scale(features))


class Probabilities(nn.Module):
    """What gets exported: logits -> softmax, so ONNX returns probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(features), dim=1)


NETS: dict[str, type[CNN] | type[MLP]] = {"cnn": CNN, "mlp": MLP}


class Adapter:
    FILE = "model.pt"

    def __init__(self, name: str) -> None:
        self.name = name

    def fit(
        self,
        cfg: Train,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        n_classes: int,
        seed: int,
        on_epoch: EpochCallback | None,
        *,
        sample_weight: np.ndarray | None = None,
    ) -> Fitted:
        """Train with early stopping on the (unweighted) validation loss. With
        ``sample_weight``, each batch's training loss is the weighted mean of its rows'."""
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(cfg.threads)
        arch = getattr(cfg, self.name).model_dump(mode="json")
        net: CNN | MLP = NETS[self.name](x_train.shape[1], n_classes, arch)
        mean = torch.tensor(x_train.mean(axis=0), dtype=torch.float32)
        std = torch.tensor(x_train.std(axis=0), dtype=torch.float32)
        net.scale.mean.copy_(mean)
        net.scale.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        net.arch = arch

        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        per_row = nn.CrossEntropyLoss(reduction="none")
        wt = None if sample_weight is None else torch.from_numpy(sample_weight.astype(np.float32))
        gen = torch.Generator().manual_seed(seed)
        best = (float("inf"), 0, copy.deepcopy(net.state_dict()))
        history: list[Epoch] = []
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for start in range(0, len(xt), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad()
                if wt is None:
                    loss = loss_fn(net(xt[idx]), yt[idx])
                else:
                    w = wt[idx]
                    loss = (per_row(net(xt[idx]), yt[idx]) * w).sum() / w.sum()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            net.eval()
            with torch.no_grad():
                logits = net(xv)
                val_loss = loss_fn(logits, yv).item()
                val_acc = (logits.argmax(1) == yv).float().mean().item()
            record = Epoch(epoch, cfg.epochs, total / len(xt), val_loss, val_acc)
            history.append(record)
            if on_epoch:
                on_epoch(record)
            if val_loss < best[0] - 1e-6:
                best = (val_loss, epoch, copy.deepcopy(net.state_dict()))
            elif epoch - best[1] >= cfg.patience:
                log.info("early stop at epoch %d (best %d)", epoch, best[1])
                break
        net.load_state_dict(best[2])
        net.eval()
        n_params = sum(p.numel() for p in net.parameters())
        return Fitted(net, history, best[1], n_params)

    def prune(
        self,
        model: Any,
        sparsity: float,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        cfg: Train,
        seed: int,
    ) -> Any:
        """A copy of ``model`` with the ``sparsity`` share of its conv/linear weights (by
        global L1 magnitude) set to zero, fine-tuned ``epochs`` epochs with the mask held."""
        from torch.nn.utils import prune

        torch.manual_seed(seed)
        torch.set_num_threads(cfg.threads)
        net = copy.deepcopy(model)
        net.arch = model.arch
        targets = [(m, "weight") for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr / 3, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad()
                loss_fn(net(xt[idx]), yt[idx]).backward()
                opt.step()
        for module, name in targets:
            prune.remove(module, name)  # the zeros become the weights
        return net.eval()

    def predict_proba(self, model: Any, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return Probabilities(model)(torch.from_numpy(x.astype(np.float32))).numpy()

    def save(self, model: Any, path: Path) -> None:
        torch.save(
            {
                "family": self.name,
                "arch": model.arch,
                "n_features": model.scale.mean.shape[0],
                "n_classes": _n_classes(model),
                "state_dict": model.state_dict(),
            },
            path,
        )

    def load(self, path: Path) -> Any:
        ckpt = torch.load(path, weights_only=True)
        net = NETS[ckpt["family"]](ckpt["n_features"], ckpt["n_classes"], ckpt["arch"])
        net.load_state_dict(ckpt["state_dict"])
        net.arch = ckpt["arch"]
        return net.eval()

    def export_onnx(self, model: Any, n_features: int, path: Path, opset: int) -> None:
        wrapped = Probabilities(model).eval()
        example = torch.zeros(2, n_features, dtype=torch.float32)
        # The exporter warns about every torchvision op it cannot register; we use none.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            verbose=False,
        )
        if program is None:
            raise TrainingError("torch.onnx.export returned no program")
        program.save(str(path))
        strip_debug_info(path)  # stack traces with this checkout's paths, FX notes


def _n_classes(net: nn.Module) -> int:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.out_features)
