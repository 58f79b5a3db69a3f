"""A run's record, `<output>/workflow.json`: what the management commands (status, watch, stop, delete)
need to find the run again without the config or its inputs: mode, workflow id, Argo and S3 settings
(never their secrets: runs.record_settings takes those from the config file or the DFLOW_* variables),
the number of frames."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "workflow.json"


@dataclass
class RunRecord:
    workflow_id: str
    config_digest: str
    mode: str = "local"  # or "argo"
    config: str | None = None  # absolute path of the config the run was made from
    host: str | None = None
    namespace: str | None = None
    debug_s3: bool = False  # a local run with its inputs in S3 (DFLOW_DEBUG_S3)
    n_frames: int = 0  # frames in pick_data
    dflow_config: dict = field(default_factory=dict)  # Argo settings, secrets removed
    dflow_s3_config: dict = field(default_factory=dict)  # S3 settings, secrets removed

    @classmethod
    def of(cls, cfg, workflow_id: str, digest: str, mode: str, config: str, **kw) -> "RunRecord":
        """The record of a run of `cfg` (a SimplifyConfig), its settings stripped of secrets."""
        from .argo import SECRET_CONFIG, SECRET_KEYS

        return cls(workflow_id, digest, mode, config, n_frames=cfg.n_frames,
                   dflow_config={k: v for k, v in cfg.jdata["dflow_config"].items() if k not in SECRET_CONFIG},
                   dflow_s3_config={k: v for k, v in cfg.jdata["dflow_s3_config"].items() if k not in SECRET_KEYS},
                   **kw)

    def save(self, output: Path) -> None:
        """Written under a temporary name and renamed: a full disk or a kill leaves the old record, never a part."""
        tmp = Path(output, RECORD + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self), indent=1))
            os.replace(tmp, Path(output, RECORD))
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, output: Path) -> "RunRecord":
        data = json.loads(Path(output, RECORD).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
