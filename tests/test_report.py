"""The reproduction report renders runs side by side, seeds as mean ± std."""

import pytest

from sila_keras.reports.report import main, render
from sila_keras.training.config import TrainConfig
from sila_keras.utils import files


def fake_run(root, name, heads, seed, accs, params=(1000, 400, 100)):
    d = root / name
    cfg = TrainConfig.create("folder:/data/cifar10", "resnet20", heads=heads, seed=seed, name=name, out=str(root))
    files.write_json(d / "config.json", cfg.to_dict())
    rows = []
    for e, a in enumerate(accs, start=1):
        row = {"epoch": e, "lr": 0.1, "loss": 1.0 / e, "top2": a + 0.1, "top3": a + 0.15, "top4": a + 0.18,
               "top5": a + 0.2, "nll": 1.5 / e}
        row.update({f"head_{k}_acc": a - 0.01 * (k - 1) for k in range(1, heads + 1)})
        rows.append(row)
    files.write_csv(d / "metrics.csv", rows)
    heads_s = {f"head_{k}": {"params": params[k - 1], "cr_percent": round(100 * (1 - params[k - 1] / params[0]), 2)}
               for k in range(1, heads + 1)}
    files.write_json(d / "summary.json", {"num_heads": heads, "heads": heads_s, "total_params": sum(params[:heads]),
                                       "epochs_done": len(accs)})
    return d


def test_base_vs_sila_with_seeds(tmp_path):
    runs = [fake_run(tmp_path, "base0", 1, 0, [0.5, 0.6]), fake_run(tmp_path, "base1", 1, 1, [0.5, 0.7]),
            fake_run(tmp_path, "sila0", 3, 0, [0.55, 0.72]), fake_run(tmp_path, "sila1", 3, 1, [0.55, 0.74])]
    out = tmp_path / "rep" / "report.md"
    text = render(runs, out)
    assert "heads=1" in text and "heads=3, β=0.1, λ=0.5" in text
    assert "65.00 ± 7.07" in text  # base ACC1 over two seeds: 60 and 70
    assert "73.00 ± 1.41" in text  # SiLa ACC1: 72 and 74
    assert "| 2 |" in text  # seed count column
    for title in ("Table 1", "Table 2", "Table 3", "Top-1 / Top-5 / BEST / NLL"):
        assert title in text
    assert (out.parent / "report_curves_1.png").stat().st_size > 1000


def test_recorded_warnings_are_shown(tmp_path):
    from sila_keras.core.batchnorm import collapsed_heads

    run = fake_run(tmp_path, "stale", 3, 0, [0.1, 0.1])
    summary = files.read_json(run / "summary.json")
    summary["warnings"] = collapsed_heads({"head_1": [3] * 10}, {"head_1": 0.36}, 10,
                                          [f"c{i}" for i in range(10)])
    files.write_json(run / "summary.json", summary)
    text = render([run, fake_run(tmp_path, "fine", 3, 1, [0.5, 0.6])], tmp_path / "r.md")
    assert "## Warnings" in text and "`stale`: head_1 (class 'c3', 100%) predicts one class" in text
    assert "--precise-bn" in text and "`fine`:" not in text


def test_not_a_run_dir(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err


def test_report_of_a_real_run(finished_run, tmp_path):
    """The shared 2-epoch resnet8 SiLa run (tests/conftest.py), not a second training."""
    text = render([finished_run], tmp_path / "report.md")
    assert "ACC2" in text and "ACC3" in text and "resnet8" in text
    with pytest.raises(ValueError):
        render([tmp_path / "nope"], tmp_path / "x.md")
