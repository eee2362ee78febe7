r"""DCCA training speed on the MNIST halves: dcca_jax against cca-zoo (PyTorch CPU), side by side.

Same model on both sides: two 392-1024-1024-50 towers (ReLU by default, --activation), batch 1000, Adam 1e-3, 60,000 training
pairs (60 steps per epoch), float32. cca-zoo's DCCA minimises minus the sum of squared canonical
correlations (ridge 1e-6), so dcca_jax is timed with ``objective="sum_squares"`` and the same ridge;
its default trace-norm objective is timed too. The same run measures the machine's float32 matrix
multiply rate (jitted 2048x2048 products) and reports our achieved FLOP rate: the towers' dense-layer
FLOPs, forward plus backward counted as 3x the forward (the first layer's unneeded input gradient
included, as is usual), divided by the steady-state epoch time, against the matmul rate measured just before and after
that implementation's epochs (the mean of the two).

  .venv-bench/bin/python experiments/bench/dcca.py --workdir=results/bench \
      --data=../shared/data/mnist/mnist.npz
"""
import json
import os
import pathlib
import platform
import time

import numpy as np
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: dcca.json and dcca.md go there.")
_DATA = flags.DEFINE_string(
    "data", str(pathlib.Path(os.environ.get("DCCA_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared"))
                / "data" / "mnist" / "mnist.npz"), "mnist.npz path.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per implementation (the first is warm-up: compilation).")
_SKIP_ZOO = flags.DEFINE_bool("skip_cca_zoo", False, "Time only dcca_jax (when cca-zoo is not installed).")
_ACT = flags.DEFINE_enum("activation", "relu", ["relu", "sigmoid", "tanh"], "Hidden activation, both sides.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Size of the square float32 matmuls for the peak rate.")

HIDDEN = (1024, 1024)
OUT_DIM = 50
BATCH = 1000
LR = 1e-3


def _load():
    from dcca_jax.data.mnist import load_mnist_halves

    d = load_mnist_halves(_DATA.value)
    return d["train_v"], d["train_s"]


def _matmul_rate(n: int, repeats: int = 20) -> dict:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    best, med = min(times), float(np.median(times))
    return {"n": n, "best_s": best, "median_s": med, "gflops_best": 2 * n**3 / best / 1e9,
            "gflops_median": 2 * n**3 / med / 1e9}


def _jax_epochs(x_v, x_s, objective: str, epochs: int) -> list[float]:
    from dcca_jax.models.dcca import DeepCCA, dcca_config

    cfg = dcca_config("paper")
    cfg.towers.visual_hidden = cfg.towers.semantic_hidden = HIDDEN
    cfg.towers.out_dim = OUT_DIM
    cfg.towers.activation = _ACT.value
    cfg.objective = objective
    cfg.ridge_v = cfg.ridge_s = 1e-6 if objective == "sum_squares" else 1e-4
    cfg.batch_size, cfg.learning_rate, cfg.epochs = BATCH, LR, epochs
    cfg.validation_fraction, cfg.patience, cfg.log_every = 0.0, 0, 10**9
    model = DeepCCA(cfg).fit(x_v, x_s)
    ends = [0.0] + [r["elapsed_s"] for r in model.history]
    return [b - a for a, b in zip(ends[:-1], ends[1:])]


def _zoo_epochs(x_v, x_s, epochs: int) -> tuple[list[float], str]:
    import lightning.pytorch as pl
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader

    import cca_zoo
    from cca_zoo.deep import DCCA, MultiviewDataset

    torch.manual_seed(0)

    def encoder():
        layers, d = [], 392
        for h in HIDDEN:
            act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[_ACT.value]
            layers += [nn.Linear(d, h), act()]
            d = h
        return nn.Sequential(*layers, nn.Linear(d, OUT_DIM))

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times, self._t = [], None

        def on_train_epoch_start(self, trainer, module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self._t)

    model = DCCA(n_components=OUT_DIM, encoders=[encoder(), encoder()], learning_rate=LR)
    loader = DataLoader(MultiviewDataset([x_v, x_s]), batch_size=BATCH, shuffle=True, drop_last=True)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(model, loader)
    return timer.times, f"cca-zoo {cca_zoo.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _markdown(r: dict) -> str:
    lines = [
        f"DCCA per-epoch training time, MNIST halves (60,000 pairs, towers 392-1024-1024-50 {r['activation']}, batch {BATCH}, "
        f"Adam {LR:g}, float32). Median of epochs 2..{r['epochs']} (epoch 1 = warm-up).",
        "",
        "| implementation | objective | s / epoch | GFLOP/s | matmul GFLOP/s before / after | % of matmul rate |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['impl']} | {row['objective']} | {row['s_per_epoch']:.2f} | {row['gflops']:.0f} | "
                     f"{row['matmul_gflops_before']:.0f} / {row['matmul_gflops_after']:.0f} | "
                     f"{100 * row['fraction_of_matmul']:.0f}% |")
    m = r["matmul"]
    lines += [
        "",
        f"float32 matmul {m['n']}x{m['n']}: {m['gflops_median']:.0f} GFLOP/s median, {m['gflops_best']:.0f} best. "
        f"Epoch FLOPs {r['epoch_tflop']:.2f} TFLOP. Speed-up over cca-zoo (same loss): "
        f"{r.get('speedup_vs_cca_zoo', float('nan')):.2f}x.",
        f"Load average before/after: {r['loadavg_before']} / {r['loadavg_after']} on {r['cpus']} CPUs"
        + (" (machine busy: other processes shared the cores)" if r["busy"] else "") + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from dcca_jax.models.towers import tower_forward_flops

    load0 = os.getloadavg()
    x_v, x_s = _load()
    n = len(x_v)
    steps = n // BATCH
    fwd = 2 * tower_forward_flops(392, HIDDEN, OUT_DIM)  # two towers, per sample
    epoch_flops = 3 * fwd * BATCH * steps
    matmul = _matmul_rate(_MATMUL_N.value)
    rows = []

    def add(impl, objective, run):
        # The matmul rate is measured right before and after each implementation and the mean of the
        # two is its reference: on a shared machine the available rate drifts within minutes.
        before = _matmul_rate(_MATMUL_N.value)
        times, note = run()
        after = _matmul_rate(_MATMUL_N.value)
        ref = 0.5 * (before["gflops_median"] + after["gflops_median"]) * 1e9
        steady = float(np.median(times[1:])) if len(times) > 1 else float(times[0])
        rows.append({"impl": impl, "objective": objective, "epoch_times_s": times, "s_per_epoch": steady,
                     "gflops": epoch_flops / steady / 1e9, "matmul_gflops_before": before["gflops_median"],
                     "matmul_gflops_after": after["gflops_median"], "fraction_of_matmul": epoch_flops / steady / ref,
                     "note": note, "loadavg": [round(x, 2) for x in os.getloadavg()]})
        logging.info("bench_dcca %s", rows[-1])

    add("dcca_jax (JAX, XLA CPU)", "sum_squares", lambda: (_jax_epochs(x_v, x_s, "sum_squares", _EPOCHS.value), ""))
    add("dcca_jax (JAX, XLA CPU)", "trace_norm", lambda: (_jax_epochs(x_v, x_s, "trace_norm", _EPOCHS.value), ""))
    if not _SKIP_ZOO.value:
        add("cca-zoo DCCA (PyTorch CPU)", "sum_squares", lambda: _zoo_epochs(x_v, x_s, _EPOCHS.value))
    matmul_after = _matmul_rate(_MATMUL_N.value)
    load1 = os.getloadavg()
    cpus = os.cpu_count()
    result = {
        "epochs": _EPOCHS.value, "activation": _ACT.value, "n_train": n, "batch": BATCH, "steps_per_epoch": steps,
        "epoch_tflop": epoch_flops / 1e12, "matmul": matmul, "matmul_after": matmul_after, "rows": rows,
        "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in load1],
        "cpus": cpus, "busy": max(load0[0], load1[0]) > 1.5 * cpus, "platform": platform.platform(),
    }
    if not _SKIP_ZOO.value:
        result["speedup_vs_cca_zoo"] = rows[-1]["s_per_epoch"] / rows[0]["s_per_epoch"]
    out = pathlib.Path(_WORKDIR.value) / "dcca.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(_markdown(result))
    logging.info("wrote %s and %s", out, out.with_suffix(".md"))


if __name__ == "__main__":
    app.run(main)
