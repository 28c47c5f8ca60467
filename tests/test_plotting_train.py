"""Styles of the training figure (fimlab.plotting_train): one colour/line style per method."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fimlab.plotting import METHOD_COLORS
from fimlab.plotting_train import plot_training, training_styles
from fimlab.train import load_experiment
from fimlab.train_config import display_name, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def _labels(toml: str, mode: str) -> list[tuple[str, str]]:
    exp = load_experiment(ROOT / "experiments" / toml, mode)
    out = []
    for m in exp["methods"]:
        c = resolve_config({**exp["common"], **m})
        out.append((c["label"], display_name(c["method"])))
    return out


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_conv_fast_methods_get_distinct_styles(mode):
    labels = _labels("train_conv_fast.toml", mode)
    assert len(labels) == 8 and len({lab for lab, _ in labels}) == 8
    styles = training_styles(labels)
    assert set(styles) == {lab for lab, _ in labels}
    assert len(set(styles.values())) == len(styles)  # injective
    # on this TOML the palette suffices: every curve is solid, in its own colour
    assert len({c for c, _ in styles.values()}) == len(styles)
    assert {ls for _, ls in styles.values()} == {"-"}
    # the clash of the first figures: Adam took Deflation's red
    assert styles["Adam"][0] != styles["Deflation"][0]
    # the project's colours are kept where they are free
    for name in ("KFAC", "KPSVD", "KFAC-corrected", "Deflation", "Adam", "SGD"):
        assert styles[name] == (METHOD_COLORS[name], "-")


def test_two_level_labels_do_not_take_anothers_colour():
    # two labels of method KFAC: the first keeps KFAC's blue, the next may not reuse it,
    # nor the colour of a method drawn later (order of the TOML: Adam after the two-level)
    labels = [("KFAC", "KFAC"), ("KFAC + a", "KFAC"), ("KFAC + b", "KFAC"), ("Adam", "Adam")]
    styles = training_styles(labels)
    assert styles["KFAC"] == (METHOD_COLORS["KFAC"], "-")
    assert len(set(styles.values())) == 4
    assert styles["KFAC + a"][0] != METHOD_COLORS["KFAC"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12),
                          st.sampled_from(sorted(METHOD_COLORS) + ["sgd", "x"])),
                max_size=120))
def test_styles_injective_for_any_labels(labels):
    styles = training_styles(labels)
    assert set(styles) == {lab for lab, _ in labels}
    assert len(set(map(repr, styles.values()))) == len(styles)
    # a repeated label keeps the style of its first occurrence
    first = {}
    for lab, meth in labels:
        first.setdefault(lab, meth)
    assert styles == training_styles(list(first.items()))


def test_plot_training_draws_each_label_in_its_style(tmp_path):
    import matplotlib.pyplot as plt

    def run(label, method, status="done"):
        eh = [{"epoch": e, "wall_time": 2.0 * e, "train_loss": 1.0 / e, "val_loss": 1.5 / e}
              for e in (1, 2, 3)]
        return {"label": label, "method": method, "status": status, "epoch_history": eh}

    results = [run("Deflation", "Deflation"), run("KFAC + spectral (residual)", "KFAC"),
               run("Adam", "adam")]
    seen = {}
    orig = plt.Axes.plot

    def spy(self, *a, **kw):
        if kw.get("label"):
            seen[kw["label"]] = (kw["color"], kw.get("ls", "-"))
        return orig(self, *a, **kw)

    plt.Axes.plot = spy
    try:
        p = plot_training(results, tmp_path / "t.png", title="t")
    finally:
        plt.Axes.plot = orig
    assert p.is_file()
    assert len(seen) == 3 and len(set(seen.values())) == 3
    assert seen["Adam"][0] == METHOD_COLORS["Adam"]
