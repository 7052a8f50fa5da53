"""Named starting points for a run spec; any field a user gives overrides the preset's.

CIFAR-100 and ImageNet follow the paper's protocols (Xu et al., arXiv 2006.11653); `digits` and
`fashion-mnist` are real data sets that install offline, with models sized for a 2-core CPU.
"""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cifar100-resnet18": {
        "data": {"name": "cifar100"},
        "model": {"arch": "resnet18", "stem": "cifar", "width": 64},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "step", "milestones": [60, 120, 160], "gamma": 0.2},
        "smoothing": {"method": "tsla", "theta": 0.2, "switch_epoch": 160},
        "epochs": 200,
        "batch_size": 128,
    },
    "imagenet-resnet50": {
        "data": {"name": "imagenet", "num_workers": 8},
        "model": {"arch": "resnet50", "stem": "imagenet", "width": 64},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"kind": "step", "milestones": [30, 60, 80], "gamma": 0.1},
        "smoothing": {"method": "tsla", "theta": 0.1, "switch_epoch": 50},
        "epochs": 90,
        "batch_size": 256,
    },
    "fashion-mnist": {
        "data": {"name": "fashion-mnist"},
        "model": {"arch": "resnet18", "stem": "cifar", "width": 16},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "step", "milestones": [10, 15], "gamma": 0.1},
        "smoothing": {"method": "tsla", "theta": 0.2, "switch_epoch": 15},
        "epochs": 20,
        "batch_size": 128,
    },
    "digits": {
        "data": {"name": "digits"},
        "model": {"arch": "resnet18", "stem": "cifar", "width": 16},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "step", "milestones": [6, 8], "gamma": 0.1},
        "smoothing": {"method": "tsla", "theta": 0.2, "switch_epoch": 6},
        "epochs": 10,
        "batch_size": 64,
    },
}
