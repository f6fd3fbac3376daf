"""examples/integrations/: the logging hook always; the Lightning module and the Accelerate loop when
those packages are installed (they are not CI requirements)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

INTEGRATIONS = Path(__file__).resolve().parents[1] / "examples" / "integrations"
sys.path.insert(0, str(INTEGRATIONS))

import logging_hook  # noqa: E402

import instance_reweight as ir  # noqa: E402


def test_hook_logs_the_epoch_statistics_of_the_readme_loop():
    records = []
    hook = logging_hook.EpochLogger(records.append, steps=4)
    criterion = ir.InstanceReweightedLoss(nn.CrossEntropyLoss(reduction="none"), "gairat", steps=4)
    burn_in = ir.BurnInScheduler(criterion, burn_in_epochs=1)
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    kappas = [torch.tensor([0, 1, 4, 4, 2, 3]), torch.tensor([4, 4, 4, 0, 0, 1])]
    for epoch in range(2):
        burn_in.step(epoch)
        for kappa in kappas:
            loss = criterion(logits, y, kappa=kappa)
            hook.add(loss, criterion, kappa=kappa)
        hook.log_epoch(epoch)
    first, second = records
    everything = torch.cat(kappas).float()
    assert first["epoch"] == 0 and not first["reweighting"] and "weight_max" not in first
    assert first["kappa_hist"] == [3, 2, 1, 1, 5] and first["examples"] == 12
    assert first["kappa_mean"] == pytest.approx(float(everything.mean()))
    assert second["reweighting"] and second["weight_mean"] == pytest.approx(1.0)
    assert second["weight_max"] == pytest.approx(float(criterion.last_weights.max()), rel=0.5)


def test_tensorboard_log_writes_scalars_and_histograms():
    calls = []
    writer = SimpleNamespace(
        add_scalar=lambda *a: calls.append(("scalar", *a)),
        add_histogram_raw=lambda key, **k: calls.append(("hist", key, k["bucket_counts"])),
        flush=lambda: calls.append(("flush",)),
    )
    logging_hook.tensorboard_log(writer)({"epoch": 3, "loss": 0.5, "kappa_hist": [1, 0, 2]})
    assert calls == [("scalar", "loss", 0.5, 3), ("hist", "kappa_hist", [1, 0, 2]), ("flush",)]


def test_lightning_module_trains_keeps_modes_and_matches_a_plain_loop():
    L = pytest.importorskip("lightning")
    import lightning_gairat as lg

    torch.manual_seed(0)
    module = lg.ReweightedModule(lg.small_cnn(), eps=0.1, step_size=0.025, steps=3,
                                 burn_in_epochs=1, lr=0.05, log=lambda r: None)  # fmt: skip
    modes = []

    class ModeProbe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            modes.append(all(m.training for m in pl_module.model.modules()))

    data = lg.toy_data(64)
    torch.manual_seed(1)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModeProbe()])  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=32))
    assert modes == [True] * 4  # Lightning's train mode survives every attack

    # The same two epochs in a plain loop: same parameters and BatchNorm statistics.
    torch.manual_seed(0)
    plain = lg.ReweightedModule(lg.small_cnn(), eps=0.1, step_size=0.025, steps=3,
                                burn_in_epochs=1, lr=0.05, log=lambda r: None)  # fmt: skip
    optimizer = plain.configure_optimizers()
    torch.manual_seed(1)
    plain.train()
    for epoch in range(2):
        plain.burn_in.step(epoch)
        for x, y in torch.utils.data.DataLoader(data, batch_size=32):
            loss = plain.training_step((x, y), 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for (name, a), b in zip(module.model.state_dict().items(), plain.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert module.criterion.active


def test_accelerate_loop_one_process():
    pytest.importorskip("accelerate")
    import accelerate_mail

    result = accelerate_mail.train(epochs=2, burn_in_epochs=1, cpu=True, log=lambda r: None)
    assert result["processes"] == 1 and result["main"]


@pytest.mark.slow
def test_accelerate_launch_starts_two_processes_on_a_cpu_and_matches_one(tmp_path):
    # The documented command starts 2 processes on a CPU machine; with normalize="global" their step
    # is the step of one process on the whole batch (no random start: the same attack in both runs).
    pytest.importorskip("accelerate")
    import shutil
    import subprocess

    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate command is not on PATH")
    script = INTEGRATIONS / "accelerate_mail.py"
    common = ["--normalize", "global", "--no-random-start", "--cpu"]
    two = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *common,
         "--batch-size", "32", "--save", str(tmp_path / "two.pt")],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert "trained in 2 process(es)" in two.stdout
    one = subprocess.run(
        [sys.executable, str(script), *common, "--batch-size", "64", "--save", str(tmp_path / "one.pt")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    assert "trained in 1 process(es)" in one.stdout
    a, b = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
