"""A tiny pretrained multi-task DPA-1 model to fine-tune from one of its branches (PyTorch backend).

    python make_example.py   # pretrained/ and data/ next to this file (the Ag-Au example made if missing)

Offline there is no pretrained model to download, so this trains one that has the shape of the real ones: one
shared DPA-1 (se_atten) descriptor over the type map [Ag, Au, Cu] and two heads (branches),
  agau  the Ag-Au example's EMT frames (examples/ag-au-emt-d3/data/pick),
  cuau  Cu-Au frames made from them (`submit_simplify.py substitute`, Cu in Ag's place, cells x 0.91), EMT,
for 600 steps (~30 s on one core). pretrained/multitask.pt is the checkpoint; config.json fine-tunes its `agau`
branch to EMT + D3(BJ) on the Ag-Au example's pick data, as the Ag-Au example does from se_e2_a models.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGAU = HERE.parent / "ag-au-emt-d3"
sys.path.insert(0, str(HERE.parent / "cu-au-from-ag-au"))
from make_example import label_emt, substitute  # noqa: E402  (the Cu-Au example's helpers)

DESCRIPTOR = {"type": "se_atten", "sel": 60, "rcut_smth": 0.5, "rcut": 4.8, "neuron": [8, 16, 32], "axis_neuron": 4,
              "attn": 16, "attn_layer": 1, "attn_dotr": True, "attn_mask": False, "tebd_dim": 8, "seed": 1}
FITTING = {"neuron": [32, 32, 32], "resnet_dt": True}
LOSS = {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1}


def systems(root: Path) -> list[str]:
    return sorted(str(p) for p in root.iterdir() if p.is_dir())


def multitask_input(cuau: Path) -> dict:
    return {
        "model": {
            "shared_dict": {"type_map_all": ["Ag", "Au", "Cu"], "dpa1": DESCRIPTOR},
            "model_dict": {head: {"type_map": "type_map_all", "descriptor": "dpa1",
                                  "fitting_net": {**FITTING, "seed": 2 + i}} for i, head in enumerate(("agau", "cuau"))},
        },
        "learning_rate": {"type": "exp", "start_lr": 0.002, "decay_steps": 100, "stop_lr": 1e-4},
        "loss_dict": {"agau": LOSS, "cuau": LOSS},
        "training": {
            "model_prob": {"agau": 0.5, "cuau": 0.5},
            "data_dict": {"agau": {"training_data": {"systems": systems(AGAU / "data" / "pick"), "batch_size": "auto"}},
                          "cuau": {"training_data": {"systems": systems(cuau), "batch_size": "auto"}}},
            "numb_steps": 600, "disp_freq": 200, "save_freq": 600, "seed": 4,
        },
    }


def pretrain(work: Path, cuau: Path) -> None:
    if (work / "multitask.pt").exists():
        return
    work.mkdir(parents=True, exist_ok=True)
    (work / "input.json").write_text(json.dumps(multitask_input(cuau), indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DP_INTRA_OP_PARALLELISM_THREADS": "1",
           "DP_INTER_OP_PARALLELISM_THREADS": "1"}
    with open(work / "train.log", "w") as log:
        subprocess.run([sys.executable, "-m", "deepmd", "--pt", "train", "input.json"], cwd=work, env=env,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    os.replace(os.path.realpath(work / "model.ckpt.pt"), work / "multitask.pt")
    (work / "model.ckpt.pt").unlink()  # the link to the file just renamed


if __name__ == "__main__":
    subprocess.run([sys.executable, str(AGAU / "make_example.py")], check=True)
    cuau = HERE / "data" / "cuau"
    substitute(AGAU / "data" / "pick", cuau)
    label_emt(cuau)
    pretrain(HERE / "pretrained", cuau)
    print("example ready:", HERE)
