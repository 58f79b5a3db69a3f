"""`dp --pt train` with the fitting net's per-layer `trainable` list honoured.

deepmd-kit's PyTorch fitting net reduces `"trainable": [false, false, true, true]` to all(list), so
the whole fitting net is frozen (or trained) at once. This entry point runs the same `dp --pt` command
line, and once the trainer is built sets `requires_grad` layer by layer as the list says (the optimizer
holds every parameter; those without gradient are not updated).

    python -m dflow_simplify.ops.pt_train train input.json [--init-model ...|--finetune ...]
"""

from __future__ import annotations

import json
import re
import sys

LAYER = re.compile(r"fitting_net\.filter_layers\.networks\.\d+\.layers\.(\d+)\.")


def fitting_trainable(jinput: dict) -> list[bool] | None:
    """The per-layer list when it mixes frozen and trainable layers, else None (deepmd-kit handles it)."""
    trainable = jinput.get("model", {}).get("fitting_net", {}).get("trainable", True)
    if isinstance(trainable, list) and len(set(map(bool, trainable))) > 1:
        return [bool(t) for t in trainable]
    return None


def apply_fitting_trainable(module, trainable: list[bool]) -> int:
    """Set requires_grad on every fitting-net layer parameter; returns how many were set."""
    n = 0
    for name, param in module.named_parameters():
        m = LAYER.search(name)
        if m:
            index = int(m.group(1))
            if index >= len(trainable):
                raise ValueError(f"fitting_net.trainable has {len(trainable)} entries but layer {index} exists")
            param.requires_grad = trainable[index]
            n += 1
    return n


def main(argv: list[str]) -> None:
    from deepmd.pt.entrypoints.main import main as dp_pt_main
    from deepmd.pt.train import training

    input_file = next((a for a in argv if a.endswith(".json")), "input.json")
    with open(input_file) as f:
        trainable = fitting_trainable(json.load(f))
    if trainable is not None:
        original_init = training.Trainer.__init__

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            if apply_fitting_trainable(self.wrapper, trainable) == 0:
                raise RuntimeError("fitting_net.trainable: no fitting-net layer found to freeze")

        training.Trainer.__init__ = init
    dp_pt_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
