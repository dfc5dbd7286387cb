#!/usr/bin/env python3
"""Writes the fixtures of tests/suite/import.rs: a small torchvision-format AlexNet state_dict and the
logits PyTorch computes for it on two fixed images, with torchvision's preprocessing.

    python3 -m pip install torch numpy        # (the CPU build suffices)
    python3 scripts/make_import_fixtures.py   # writes tests/fixtures/import/

The net is torchvision's `alexnet` structure (the same `features` / `avgpool` / `classifier`
modules at the same indices, so the state_dict names are torchvision's) with narrow layers, so
the files stay small: widths 8/16/24/16/16 kernels, 32 hidden units, 10 classes. Its weights are
He-initialised from seed 0. If torchvision is installed, the full-width
version of this module is checked to have exactly torchvision's state_dict names and shapes.
"""
import json
import os

import torch
from torch import nn

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "import")
WIDTHS = [8, 16, 24, 16, 16, 32]
CLASSES = 10
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class AlexNet(nn.Module):
    """torchvision.models.AlexNet with its widths as parameters."""

    def __init__(self, widths, classes):
        super().__init__()
        c1, c2, c3, c4, c5, hidden = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(c5 * 6 * 6, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def pixels(image, side=224):
    """The test images: u8 pixels [3, side, side] from a formula tests/suite/import.rs repeats."""
    i = torch.arange(3 * side * side, dtype=torch.int64)
    return ((i * 7919 + 104729 * image + (i // side) * 31) % 256).reshape(3, side, side)


def main():
    try:
        import torchvision

        ours = AlexNet([64, 192, 384, 256, 256, 4096], 1000).state_dict()
        theirs = torchvision.models.alexnet().state_dict()
        assert [(k, v.shape) for k, v in ours.items()] == [
            (k, v.shape) for k, v in theirs.items()
        ], "the module differs from torchvision's alexnet"
        print("checked against torchvision", torchvision.__version__)
    except ImportError:
        print("torchvision not installed: structure not cross-checked")

    torch.manual_seed(0)
    model = AlexNet(WIDTHS, CLASSES).eval()
    # He initialisation keeps the activations' scale through the narrow layers (PyTorch's
    # default shrinks them until the biases decide the logits, which would test little).
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.uniform_(m.bias, -0.1, 0.1)
    os.makedirs(OUT, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(OUT, "torchvision_small.pth"))
    # A whole pickled model (not a state_dict): the importer must refuse it without running it.
    torch.save(model, os.path.join(OUT, "torchvision_small_whole_model.pth"))

    px = torch.stack([pixels(0), pixels(1)]).to(torch.float32)
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1)
    x = (px / 255.0 - mean) / std  # transforms.ToTensor + transforms.Normalize
    with torch.no_grad():
        logits = model(x)
    info = {
        "widths": WIDTHS,
        "classes": CLASSES,
        "torch": torch.__version__,
        "logits": logits.tolist(),
    }
    with open(os.path.join(OUT, "torchvision_small_logits.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print("logits", logits)


if __name__ == "__main__":
    main()
