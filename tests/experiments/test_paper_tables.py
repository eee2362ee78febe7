"""The paper's tables and figures (experiments/studies/paper_tables.py) over the test config's pipeline run."""
import json
import pathlib

import pytest
from tests.conftest import METHODS, tiny_pipeline_config

from experiments.studies import paper_tables


def test_studies_write_their_outputs(pipeline_run):
    workdir, results = pipeline_run
    cfg = tiny_pipeline_config()
    t1 = paper_tables.correlation_study(cfg, workdir)
    assert t1["table1_correlation"].keys() == results["table1_correlation"].keys()
    t2 = paper_tables.recommendation_study(cfg, workdir)
    assert t2["table2_recommendation"].keys() == METHODS
    sweep = paper_tables.dimension_sweep(cfg, workdir, dims=(2, 4, 10_000), models=("cca",))
    assert sorted(sweep["af"]["DMFR&CCA"]) == ["2", "4"] and sweep["skipped"][0]["dim"] == 10_000
    assert sweep["af"]["DMFR&CCA"]["4"] == pytest.approx(results["table2_recommendation"]["DMFR&CCA"]["metrics"]["per_image/AF"])
    gal = paper_tables.examples_gallery(cfg, workdir, model="cca", n_images=4)
    fs = [it["f"] for it in gal["items"]]
    assert fs == sorted(fs) and all(0 <= f <= 1 for f in fs)
    assert pathlib.Path(gal["png"]).read_bytes()[:4] == b"\x89PNG" and "color:red" in pathlib.Path(gal["html"]).read_text()
    bench = paper_tables.benchmark_models(cfg, workdir, models=("cca",), repeats=1)
    assert bench["rows"][0]["model"] == "DMFR&CCA" and bench["rows"][0]["fit_seconds"] >= 0
    for name in ("table1", "table2", "sweep_dims", "benchmark_models"):
        assert json.loads((workdir / f"{name}.json").read_text())["versions"]["jax"]
