"""Support for the model tests (no tests here): torchvision's ResNet state_dict layout, written out independently
of the backbone under test."""
from __future__ import annotations


def torchvision_resnet_keys(depth: int) -> dict[str, tuple[int, ...]]:
    """torchvision's resnet{18,34,50} state_dict layout (keys and shapes), written out independently."""
    bottleneck = depth == 50
    layers = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    keys: dict[str, tuple[int, ...]] = {}

    def bn(name, c):
        keys.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                     f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    in_ch = 64
    for i, n in enumerate(layers):
        width = 64 * 2**i
        out_ch = width * (4 if bottleneck else 1)
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            if bottleneck:
                keys[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
                keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
                keys[f"{p}.conv3.weight"] = (out_ch, width, 1, 1)
                bn(f"{p}.bn1", width), bn(f"{p}.bn2", width), bn(f"{p}.bn3", out_ch)
            else:
                keys[f"{p}.conv1.weight"] = (width, in_ch, 3, 3)
                keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
                bn(f"{p}.bn1", width), bn(f"{p}.bn2", width)
            if j == 0 and (i > 0 or in_ch != out_ch):
                keys[f"{p}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
                bn(f"{p}.downsample.1", out_ch)
            in_ch = out_ch
    keys["fc.weight"] = (1000, in_ch)
    keys["fc.bias"] = (1000,)
    return keys


# parameter counts of torchvision's resnet18/34/50 (with the 1000-class fc)
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032}
