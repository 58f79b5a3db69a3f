"""`dp train` then `dp freeze` in one process: deepmd-kit and its backend (TensorFlow: ~6 s to import here)
are loaded once per model instead of twice, and TensorFlow without the Keras it would import for nothing.

    python -m dflow_simplify.ops.dp_train_freeze --tf graph.pb train input.json [--init-model ...]
    python -m dflow_simplify.ops.dp_train_freeze --pt graph.pth train input.json [--finetune ...]

The training is deepmd-kit's own command line (PyTorch through pt_train, for per-layer `trainable`);
deepmd-kit's TensorFlow freeze resets the default graph before it reads the checkpoint back
(tests/test_train.py checks that the frozen graph holds the checkpoint's trained weights).
"""

from __future__ import annotations

import logging
import os
import sys


def skip_keras() -> None:
    """TensorFlow imports Keras eagerly when it can (`keras.src.optimizers`, inside a try that ignores an
    ImportError), ~0.45 s here with matplotlib behind it; deepmd-kit's TensorFlow backend does not use Keras
    (deepmd/tf/env.py says so). Marking the module absent makes that import fail at once."""
    sys.modules.setdefault("keras.src.optimizers", None)


def train(flag: str, train_args: list[str]) -> None:
    if flag == "--pt":
        from .pt_train import main as pt_train

        pt_train(train_args)
    else:
        from deepmd.main import main as dp

        dp([flag, *train_args])


def freeze(flag: str, frozen: str) -> None:
    from deepmd.main import main as dp

    dp([flag, "freeze", "-o", frozen])


def main(argv: list[str]) -> None:
    flag, frozen, train_args = argv[0], argv[1], argv[2:]
    if flag not in ("--tf", "--pt") or not train_args or train_args[0] != "train":
        raise SystemExit("usage: python -m dflow_simplify.ops.dp_train_freeze --tf|--pt FROZEN train INPUT [...]")
    if flag == "--tf":
        skip_keras()
    train(flag, train_args)
    print(f"$ dp {flag} freeze -o {frozen}  (same process)", flush=True)
    freeze(flag, frozen)


def end_now() -> None:
    """Exit without the interpreter's teardown of TensorFlow/PyTorch (~1.5 s a model here): every file is
    written and closed by then; only the log streams need flushing."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
    end_now()
