"""RunFP: relabel a group of picked frames with an FP engine, one task folder per frame.

Failures are data, not crashes: a task that fails, times out, does not parse or gives a NaN or infinite label
is recorded in the group's failures.json (system, frame, engine, reason, log tail) and so is a frame skipped for
its bad box (`kind: bad_box`); PrepTrain then returns failed frames to the pool and applies `ratio_failed`. A
full disk is no fault of the frame's: the step fails, and a rerun labels the frame.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import traceback
from pathlib import Path
from typing import List

import dpdata
import numpy as np
from dflow.python import OP, OPIO, Artifact, OPIOSign

from .data import extracted_frames, iter_frames, save_labeled
from .fp.bad_box import bad_box_reason, parse_criteria
from .fp.base import FPTaskError, get_engine
from .params import fatal_errors


def non_finite_labels(labeled: dpdata.LabeledSystem) -> str | None:
    """Why an engine's labels cannot be trained on (NaN or infinite energy, forces or virial), or None."""
    bad = [name for name in ("energies", "forces", "virials")
           if name in labeled.data and not np.isfinite(labeled.data[name]).all()]
    return f"non-finite label: {', '.join(bad)} hold NaN or infinity" if bad else None


def out_of_space(*texts: str) -> bool:
    """A failed FP code whose output says the disk was full: no fault of the frame's."""
    return any(msg in t for t in texts for msg in ("No space left on device", "Disk quota exceeded"))


def label_frames(roots, frame_ids: dict[str, list[int]], type_map, fp_style: str, fp_params: dict,
                 workdir: str | os.PathLike, files_dir=None, skip_bad_box: str | None = None, origin=None):
    """Label every frame; returns (MultiSystems, {formula: [(system, frame), ...]}, failures).
    `origin` maps (system, frame) of `roots` to the frame's id in pick_data, for records and sources."""
    engine = get_engine(fp_style)
    criteria = parse_criteria(skip_bad_box) if skip_bad_box else {}
    multi = dpdata.MultiSystems(type_map=type_map)
    sources: dict[str, list[tuple[str, int]]] = {}
    failures = []
    for key, ids, system in iter_frames(roots, frame_ids, type_map, labeled=engine.needs_input_labels):
        for j, fid in enumerate(ids):
            src_key, src_frame = origin[(key, fid)] if origin else (key, fid)
            record = {"system": src_key, "frame": src_frame, "engine": fp_style}
            frame = system[j]
            bad = None if frame.nopbc or not criteria else bad_box_reason(frame["cells"][0], criteria)
            if bad:
                failures.append(dict(record, kind="bad_box", reason=bad, log_tail=[]))
                continue
            task_dir = Path(workdir, "task.%s.%06d" % (src_key.replace("/", "_").replace("#", "_"), src_frame))
            task_dir.mkdir(parents=True, exist_ok=True)
            try:
                labeled = engine.label(frame, str(task_dir), fp_params, files_dir)
            except FPTaskError as exc:  # a failed task is data: record it and go on
                if out_of_space(str(exc), *exc.log_tail):
                    raise OSError(errno.ENOSPC, f"the FP task of {src_key} frame {src_frame} ran out of space: "
                                                f"{exc}", str(task_dir)) from exc
                failures.append(dict(record, kind="failed", reason=str(exc), log_tail=exc.log_tail))
                continue
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # the machine's trouble, not the frame's: the step fails, a rerun labels it
                failures.append(dict(record, kind="failed", reason=f"{type(exc).__name__}: {exc}",
                                     log_tail=traceback.format_exc().splitlines()[-5:]))
                continue
            bad_label = non_finite_labels(labeled)
            if bad_label:
                failures.append(dict(record, kind="failed", reason=bad_label, log_tail=[]))
                continue
            multi.append(labeled)
            sources.setdefault(labeled.formula, []).append((src_key, src_frame))
    return multi, sources, failures


class RunFP(OP):
    """Label one group of picked frames at the new level of theory."""

    @classmethod
    def get_input_sign(cls):
        return OPIOSign({
            "frames": Artifact(Path),
            "type_map": List[str],
            "fp_style": str,
            "fp_params": dict,
            "fp_files": Artifact(Path, optional=True),
            "skip_bad_box": str,
        })

    @classmethod
    def get_output_sign(cls):
        return OPIOSign({"labeled_data": Artifact(Path), "failures": Artifact(Path), "n_labeled": int, "n_failed": int,
                         "n_skipped": int})

    @OP.exec_sign_check
    @fatal_errors
    def execute(self, ip: OPIO) -> OPIO:
        # the group's frames, extracted from pick_data by SelectConfs (pick_data itself never comes here)
        roots, ids, origin = extracted_frames(ip["frames"])
        # slices' outputs are merged by path: name this group's folder after its (disjoint) frames
        group = "group." + hashlib.sha1(json.dumps(sorted(origin.values())).encode()).hexdigest()[:12]
        multi, sources, failures = label_frames(
            roots, ids, ip["type_map"], ip["fp_style"], ip["fp_params"],
            Path(group, "tasks").absolute(), ip["fp_files"], ip["skip_bad_box"] or None, origin)
        save_labeled(multi, sources, Path("labeled", group))
        Path(group, "failures.json").write_text(json.dumps(failures, indent=1))
        n_skipped = sum(f["kind"] == "bad_box" for f in failures)
        return OPIO({"labeled_data": Path("labeled", group), "failures": Path(group, "failures.json"),
                     "n_labeled": multi.get_nframes(), "n_failed": len(failures) - n_skipped, "n_skipped": n_skipped})
