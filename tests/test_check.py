"""The data check (dcca_jax.check) and its two commands: experiments/check_data.py and pipeline.py --dry_run."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dcca_jax import check, sizes
from tests.conftest import ROOT
from tests.test_pipeline_family import family_config, write_image_folder

EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """30 images over 5 words; one listed file is missing, one is text named .png."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    words = [f"w{j}" for j in range(5)]
    tags = [list(rng.choice(words, size=int(rng.integers(1, 3)), replace=False)) for _ in range(30)]
    write_image_folder(root, tags)
    (root / "img003.png").write_text("not an image")
    (root / "img007.png").unlink()
    return root


def test_check_counts_images_tags_and_sizes(folder):
    rep = check.check_data(family_config("image_folder", folder))
    assert rep.ok, rep.problems
    assert rep.images["found"] == 29 and rep.images["missing"] == ["img007.png"]
    assert [pathlib.Path(b["path"]).name for b in rep.images["unreadable"]] == ["img003.png"]
    # The unreadable image is left out of the sizes, as the pipeline's CNN stage leaves it out.
    assert rep.shape["n_train"] + rep.shape["n_test"] == 28
    assert rep.shape["vocabulary"] == 5 and 1 <= rep.shape["tags_min"] <= rep.shape["tags_per_image"] <= 2
    assert rep.sizes["resolved"]["semantic.n_clusters"]["value"] == 4  # min(8, W - 1)
    assert rep.visual == {"backbone": "handcrafted", "dim": 1216}
    text = check.format_check(rep)
    for needle in ("29 found, 1 missing, 1 unreadable (header read)", "vocabulary: 5 words",
                   "--config.semantic.n_clusters", "no problems"):
        assert needle in text, (needle, text)
    assert rep.seconds < 30


def test_check_lists_every_problem(folder):
    cfg = family_config("image_folder", folder)
    cfg.semantic.n_clusters = 50
    cfg.recommend.n_tags = 9
    cfg.jec.k = 1000
    rep = check.check_data(cfg)
    assert not rep.ok
    assert rep.problems == [
        "--config.semantic.n_clusters=50: must be between 1 and W (words seen at least semantic.skipgram.min_count "
        f"times in the {rep.shape['n_fit']} fit images) = 5",
        "--config.recommend.n_tags=9: must be between 1 and V (vocabulary words) = 5",
        f"--config.jec.k=1000: must be between 1 and n_train = {rep.shape['n_train']}",
    ]
    assert "3 problem(s); the pipeline would fail" in check.format_check(rep)


def test_check_reports_a_loader_failure(tmp_path):
    cfg = family_config("image_folder", tmp_path)  # no tags.tsv
    rep = check.check_data(cfg)
    assert not rep.ok and rep.problems[0].startswith("data: ") and "tags.tsv" in rep.problems[0]
    assert "problem(s)" in check.format_check(rep)


def _cli(script: str, folder, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), f"--config={EXPERIMENTS / 'configs' / 'image_folder.py'}",
         f"--config.data.root={folder}", "--config.visual.backbone=handcrafted", *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_check_data_cli_exit_status(folder, tmp_path):
    good = _cli("check_data.py", folder, "--config.recommend.n_tags=auto")
    assert good.returncode == 0, good.stderr[-2000:]
    assert "--config.recommend.n_tags" in good.stdout and "no problems" in good.stdout
    bad = _cli("check_data.py", folder, "--config.semantic.n_clusters=40", "--config.cca.n_components=auto")
    assert bad.returncode == 1
    assert "--config.semantic.n_clusters=40: must be between 1 and" in bad.stdout
    # image_folder.py keeps the paper's 5 tags per image: 5 words allow it, the mean of 1.5 tags warns.
    assert "warning: the training images have" in bad.stdout


def test_pipeline_dry_run_stops_before_any_stage(folder, tmp_path):
    bad = _cli("pipeline.py", folder, f"--workdir={tmp_path}", "--dry_run", "--config.kcca.solver=nystrom",
               "--config.kcca.n_landmarks=5000")
    assert bad.returncode == 1 and "--config.kcca.n_landmarks=5000: must be between 1 and n_fit" in bad.stdout
    assert not (tmp_path / "stages" / "cnn").exists()
    # Without --dry_run the run stops with the same problems, in one error, before the CNN stage.
    run = _cli("pipeline.py", folder, f"--workdir={tmp_path}", "--config.kcca.solver=nystrom",
               "--config.kcca.n_landmarks=5000", "--config.recommend.k=999")
    assert run.returncode != 0 and "SizeError: 2 size(s) do not fit the data" in run.stderr
    assert "--config.kcca.n_landmarks=5000" in run.stderr and "--config.recommend.k=999" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "stages" / "cnn").exists()


def test_size_error_is_raised_before_the_cnn_stage(folder, tmp_path):
    from dcca_jax import pipeline

    cfg = family_config("image_folder", folder)
    cfg.visual.autoencoder.code_dim = 5000
    p = pipeline.Pipeline(cfg, tmp_path)
    with pytest.raises(sizes.SizeError, match=r"--config.visual.autoencoder.code_dim=5000: must be between 1 and "
                                              r"min\(d = 1216, n_fit - 1 = \d+\)"):
        p.run()
    assert not (tmp_path / "stages" / "cnn").exists()


def test_check_names_an_unusable_engine(folder, monkeypatch):
    from tests.conftest import shared_path

    cfg = family_config("image_folder", folder)
    cfg.visual.backbone = "mobilenet_v2"
    cfg.visual.tflite_path = str(shared_path("models", "mobilenet_v2_1.0_224_quant",
                                             "mobilenet_v2_1.0_224_quant.tflite"))
    cfg.visual.engine = "litert"
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if the package were not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    rep = check.check_data(cfg)
    engine = [p for p in rep.problems if "engine" in p]
    assert len(engine) == 1, rep.problems
    assert engine[0].startswith("--config.visual.engine=litert: the LiteRT engine needs the ai-edge-litert package")
    assert "pip install ai-edge-litert" in engine[0]
