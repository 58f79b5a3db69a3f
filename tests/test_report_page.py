"""report.html in a real browser (headless Chromium, tests/browser.py), built from a recorded report: the example's
report.json, model_errors.json (its parity forces cut to 600 components to stay small) and timing.json, in
tests/data/report."""

import json
import shutil
from pathlib import Path

import pytest

from dflow_simplify.workflows.report_page import write_page
from tests import browser

RECORDED = Path(__file__).parent / "data" / "report"
FIRST_SCREEN = ("frames-relabeled", "pool-size", "iterations", "stop-rule", "error-rmse_e_per_atom", "fp-failures", "time",
                "stage-times")


def check_page(page: Path) -> dict:
    """Open `page` at 1280x800 and assert what a reader needs: every image loaded, no console error, the summary
    in the first screen. Returns the summary's texts by id."""
    why = browser.why_no_browser()
    if why:
        pytest.skip(why)
    with browser.browser() as driver:
        browser.open_page(driver, page)
        assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == list(browser.SCREEN)
        images = browser.images(driver)
        assert len(images) >= 3 and all(i["complete"] and i["width"] > 0 and i["alt"] for i in images), images
        assert browser.console_errors(driver) == []
        hidden = [i for i in FIRST_SCREEN if not browser.in_first_screen(driver, i)]
        assert not hidden, f"not in the first 1280x800 screen: {hidden}"
        return {i: browser.text_of(driver, i) for i in FIRST_SCREEN}


def test_recorded_report_reads_in_a_browser(tmp_path):
    for name in ("report.json", "model_errors.json", "timing.json"):
        shutil.copy(RECORDED / name, tmp_path / name)
    report = json.loads((tmp_path / "report.json").read_text())
    texts = check_page(write_page(tmp_path))
    assert texts["frames-relabeled"].split("\n")[1:] == [str(report["n_relabeled"]), "21.0% of the pool"]
    assert texts["pool-size"].split("\n")[1:] == ["200 frames", "in 2 system(s)"]
    assert "no frame selected" in texts["stop-rule"] and "of the 1 frame left in the pool" in texts["stop-rule"]
    assert "0.619 → 0.00383 eV/atom" in texts["error-rmse_e_per_atom"]


def test_exact_fits_have_a_table_on_the_page(tmp_path):
    """train_style exact: each iteration's fits (loss against the optimum, effective parameters) in a table."""
    for name in ("report.json", "model_errors.json", "timing.json"):
        shutil.copy(RECORDED / name, tmp_path / name)
    report = json.loads((tmp_path / "report.json").read_text())
    fit = {"frames": 10, "frames_computed": 10, "parameters": 66, "loss_ratio": 1.0271, "effective_parameters": 59.9}
    report["training_fits"] = {"1": [fit, dict(fit, loss_ratio=1.081, effective_parameters=58.3)]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    page = write_page(tmp_path).read_text()
    assert "Exact output-layer fits" in page and "1.027–1.081" in page and "58.3–59.9" in page
    report["training_fits"] = {}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert "Exact output-layer fits" not in write_page(tmp_path).read_text()
