"""plots.py and the quickstart figure: branched runs drawn from the branch point, no empty panels,
whole-epoch ticks, printed paths, and GAIRAT's and MAIL-AT's weights per point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import plots  # noqa: E402
import quickstart  # noqa: E402

matplotlib = pytest.importorskip("matplotlib")


def record(epoch: int, method: str, seconds: float, **extra) -> dict:
    return {"epoch": epoch, "method": method, "lr": 0.1, "loss": 1.0 / (epoch + 1),
            "seconds": seconds, "test_nat_acc": 0.5, "test_pgd_acc": 0.3, **extra}  # fmt: skip


PREFIX = [record(e, "at", 1.0 + e, kappa_mean=5.0, kappa_median=5.0) for e in range(3)]
GAIRAT = PREFIX + [record(3, "gairat", 9.1, kappa_mean=4.0, kappa_median=4.0, weight_max=3.0,
                          weight_std=0.5, weight_min=0.1)]  # fmt: skip
AT = PREFIX + [record(3, "at", 9.2, kappa_mean=6.0, kappa_median=6.0)]
OTHER = [record(e, "at", 2.0 + e, kappa_mean=5.0, kappa_median=5.0) for e in range(4)]


@pytest.fixture
def figures(monkeypatch):
    """Every figure save_figure is given, kept open for inspection."""
    kept = []
    real = plots.save_figure

    def keep(fig, out, dpi=120, note=""):
        kept.append(fig)
        fig.savefig = lambda *a, **k: None
        monkeypatch.setattr(matplotlib.pyplot, "close", lambda f: None)
        return real(fig, out, dpi, note)

    monkeypatch.setattr(plots, "save_figure", keep)
    return kept


def test_shared_prefix_found_once_and_branches_start_at_the_branch_point():
    prefixes, own = plots.shared_prefixes({"gairat": GAIRAT, "at": AT, "other": OTHER})
    assert prefixes == [(["gairat", "at"], PREFIX)]
    assert own["gairat"] == GAIRAT[2:] and own["at"] == AT[2:]  # from the last shared epoch
    assert own["other"] == OTHER


@pytest.mark.slow
def test_curves_draw_the_prefix_once_and_leave_out_empty_panels(figures, tmp_path, capsys):
    path = plots.plot_curves({"gairat": GAIRAT, "at": AT}, tmp_path / "c.png")
    assert f"figure: {path}" in capsys.readouterr().out
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert not any("PM_adv" in t for t in titles)  # no MAIL run: no PM panel
    assert any("instance weights" in t for t in titles)  # one reweighted epoch: drawn
    kappa = next(ax for ax in fig.axes if ax.get_title().startswith("geometry value"))
    black = [line for line in kappa.get_lines() if line.get_color() == "k"]
    assert [list(line.get_xdata()) for line in black] == [[0, 1, 2], [0, 1, 2]]  # median, mean
    coloured = [list(line.get_xdata()) for line in kappa.get_lines() if line.get_color() != "k"]
    assert coloured == [[2, 3]] * 4  # each branch from epoch 2, for median and mean
    weights = next(ax for ax in fig.axes if ax.get_title().startswith("instance weights"))
    assert all(line.get_marker() not in (None, "None", "") for line in weights.get_lines())
    for ax in fig.axes:
        if ax.get_xlabel():
            assert ax.get_xlabel() == "epoch (0-based)"
            assert all(float(t).is_integer() for t in ax.get_xticks())


def test_histograms_have_whole_epoch_ticks_and_print_the_path(figures, tmp_path, capsys):
    log = [dict(r, kappa_hist=[1, 2, 3]) for r in GAIRAT]
    path = plots.plot_histograms(log, tmp_path / "h.png")
    assert f"figure: {path}" in capsys.readouterr().out
    (ax, _colorbar) = figures[0].axes
    assert ax.get_xlim() == (-0.5, 3.5)
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_top_share_matches_a_sorted_sum():
    w = torch.tensor([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0] * 2)
    assert quickstart.top_share(w) == pytest.approx((5 + 5) / 30)
    assert quickstart.top_share(torch.ones(30)) == pytest.approx(0.1)


def test_quickstart_figure_shows_gairat_and_mail_weights_with_the_note(figures, tmp_path):
    result = quickstart.main(["--epochs=4", "--n=100", "--toys=moons", f"--out={tmp_path}"])
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes]
    share = {m: 100 * result["accuracy"]["moons"][m]["top10_weight"] for m in ("gairat", "mail-at")}
    for method in ("gairat", "mail-at"):
        title = f"moons: {method} weight per point\ntop 10 % carry {share[method]:.0f} % of it"
        assert title in titles
    assert any("κ under AT" in t for t in titles)
    assert any(text.get_text() == quickstart.TOP10_NOTE for text in fig.texts)


def test_histograms_separate_kappa_from_pm_epochs_and_label_the_end_bins(figures, tmp_path):
    low, high, bins = plots.WEIGHT_BINS
    burn_in = [record(e, "at", 1.0, kappa_hist=[1, 2, 3]) for e in range(2)]
    mail = [record(e, "mail-at", 1.0, margin_hist=[1] * 20, weight_hist=[1] * bins)
            for e in (2, 3, 4)]  # fmt: skip
    plots.plot_histograms(burn_in + mail, tmp_path / "h.png", "MAIL-AT")
    kappa, margin, weight = figures[0].axes[:3]  # then the colour bars
    assert kappa.get_title() == "MAIL-AT κ, epochs 0–1"
    assert margin.get_title() == "MAIL-AT PM_adv, epochs 2–4"
    for ax in (kappa, margin, weight):
        assert ax.get_xlim() == (-0.5, 4.5)  # one epoch axis for every panel
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [1.5, 1.5]  # where κ gives way to PM
    assert [t.get_text() for t in kappa.texts] == ["PM epochs"]
    assert [t.get_text() for t in margin.texts] == ["κ epochs"]
    colours = figures[0].axes[3:]
    assert all(bar.get_yscale() == "log" for bar in colours)  # the sparse bins stay visible
    assert kappa.get_images()[0].norm.vmin == plots._FRACTION_FLOOR
    labels = [t.get_text() for t in weight.get_yticklabels()]
    assert labels[0] == f"≤{low + 0.25:g}\n(all <{low:g})"
    assert labels[-1] == f"≥{high - 0.25:g}\n(all >{high:g})"


def test_row_curves_one_panel_per_row_seeds_in_one_colour_prefix_once(figures, tmp_path):
    at0, at1 = AT, [dict(r, test_pgd_acc=0.35) for r in AT]
    gairat1 = at1[:3] + GAIRAT[3:]
    rows = {"AT": {"0": at0, "1": at1}, "GAIRAT": {"0": GAIRAT, "1": gairat1}, "MART": {"0": []}}
    plots.plot_row_curves(rows, tmp_path / "c.png")
    at, gairat, mart = figures[0].axes
    assert [ax.get_title() for ax in (at, gairat, mart)] == ["AT (2 seeds)", "GAIRAT (2 seeds)",
                                                             "MART (0 seeds)"]  # fmt: skip
    assert [t.get_text() for t in mart.texts] == ["no log yet"]
    for ax in (at, gairat):
        grey = [line for line in ax.get_lines() if line.get_color() == "0.55"]
        own = {line.get_color() for line in ax.get_lines()} - {"0.55"}
        assert len(own) == 1  # the row's colour for every seed
        assert [list(line.get_xdata()) for line in grey] == [[0, 1, 2]] * 4  # 2 seeds × 2 series
    assert at.get_shared_y_axes().joined(at, gairat)


def test_row_curves_start_the_accuracy_axis_below_the_late_epochs(figures, tmp_path):
    ramp = [0.0, 0.5, 0.85, 0.9, 0.92, 0.93]  # PGD accuracy climbing out of an ε ramp
    log = [record(e, "at", 1.0, test_pgd_acc=a, test_nat_acc=0.99) for e, a in enumerate(ramp)]
    assert plots.accuracy_floor(log) == 85.0  # epochs 3-5 (the second half): 90 % - 5
    low = [dict(r, test_pgd_acc=0.2) for r in log]
    assert plots.accuracy_floor(low) == 0.0  # a floor under 20 % is no floor
    plots.plot_row_curves({"AT": {"0": log}}, tmp_path / "c.png")
    (fig,) = figures
    assert fig.axes[0].get_ylim() == (85.0, 100.5)
    assert any("start at 85 %" in t.get_text() for t in fig.texts)


def test_plots_main_takes_run_folders(tmp_path):
    folder = tmp_path / "at-seed0"
    folder.mkdir()
    (folder / "log.jsonl").write_text("\n".join(json.dumps(r) for r in AT) + "\n")
    assert plots.main([str(folder), f"--out={tmp_path / 'c.png'}"]).is_file()
