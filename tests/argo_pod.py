"""Run one OP inside a container image the way an Argo pod runs it (for the image smoke test).

Argo's init container puts each input artifact under /tmp/inputs/artifacts/<name>, the main container
runs dflow's generated script with `python3` after Argo substituted the `{{inputs.parameters.*}}`
placeholders, and the wait container collects /tmp/outputs. Here podman plays all three: the
artifacts are laid out as dflow uploads them (files plus a `.dflow` catalog), the placeholders are
substituted as Argo would, and /tmp is a host folder the test reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PODMAN_CONF = ROOT / "images" / "podman" / "containers.conf"


def podman_env(cache: Path) -> dict:
    """podman as this kind of machine needs it: runc, cgroupfs, lowered ulimits, vfs storage under `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    storage = cache / "storage.conf"
    storage.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{cache}/run"\ngraphroot = "{cache}/storage"\n')
    return dict(os.environ, CONTAINERS_CONF=str(PODMAN_CONF), CONTAINERS_STORAGE_CONF=str(storage))


def stage_artifact(paths: list[Path], dest: Path) -> None:
    """Lay `paths` out as dflow's upload_artifact does: each under its absolute path, plus the catalog."""
    items = []
    for order, p in enumerate(paths):
        rel = str(Path(p).resolve()).lstrip("/")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(p).is_dir() else shutil.copyfile)(p, target)
        items.append({"dflow_list_item": rel, "order": order})
    (dest / ".dflow").mkdir(parents=True, exist_ok=True)
    (dest / ".dflow" / str(uuid.uuid4())).write_text(json.dumps({"path_list": items}))


def argo_script(template, parameters: dict) -> str:
    """dflow's script with the parameter placeholders filled as Argo fills them (JSON for non-strings); a
    parameter not given takes the template's default, as in Argo."""
    script = template.script
    defaults = {n: p.value for n, p in template.inputs.parameters.items() if getattr(p, "value", None) is not None}
    for name, value in {**defaults, **parameters}.items():
        text = value if isinstance(value, str) else json.dumps(value)
        script = script.replace("{{inputs.parameters.%s}}" % name, text)
    script = script.replace("{{workflow.name}}", "smoke-test")
    assert "{{inputs.parameters." not in script, "a parameter was left unset"
    return script


def run_in_pod(image: str, template, parameters: dict, artifacts: dict[str, list[Path]], workdir: Path,
               env: dict) -> Path:
    """Run the template's OP in `image`; returns the folder that was the pod's /tmp (outputs/ inside)."""
    pod_tmp = workdir / "pod-tmp"
    for name, paths in artifacts.items():
        stage_artifact(paths, pod_tmp / "inputs" / "artifacts" / name)
    (pod_tmp / "outputs").mkdir(parents=True, exist_ok=True)
    (pod_tmp / "script").write_text(argo_script(template, parameters))
    subprocess.run(["chmod", "-R", "a+rwX", str(pod_tmp)], check=True)  # the images run as uid 1000
    cmd = ["podman", "run", "--rm", "--network", "none", "-v", f"{pod_tmp}:/tmp", "-w", "/tmp",
           image, *template.command, "/tmp/script"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return pod_tmp
