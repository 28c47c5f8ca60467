"""Tables of a results file: one row per setting (mean over seeds) and the best settings."""

from __future__ import annotations

from collections.abc import Sequence

from .spec import KEY_COLUMNS, RESULT_COLUMNS, STATUS_OK, SweepConfigError


# ------------------------------------------------------------------- report
def group_keys(df, by: Sequence[str] | None) -> list[str]:
    """What a best setting / heat-map is given *per*.

    Default: ``method``, then every other varied option whose values are not numbers
    (data set, coarse space, damping rule, ...); numeric options are hyper-parameters to
    choose, not groups.
    """
    if by is not None:
        missing = [k for k in by if k not in df]
        if missing:
            raise SweepConfigError(
                f"cannot group by {missing}: no such column; the option columns are "
                + ", ".join(option_columns(df))
            )
        return list(by)
    keys = ["method"] if "method" in df else []
    for k in option_columns(df):
        if (k not in keys and df[k].nunique(dropna=False) > 1
                and not _is_numeric_column(df[k])):
            keys.append(k)
    return keys


def _is_numeric_column(col) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(col)) and not pd.api.types.is_bool_dtype(col)


def option_columns(df) -> list[str]:
    cols = list(df.columns)
    start, stop = len(KEY_COLUMNS), cols.index("status")
    return cols[start:stop]


def setting_table(
    df,
    metric: str = "final_train_loss",
    average_over: Sequence[str] = ("seed",),
):
    """Mean of ``metric`` per setting (the options except ``average_over``), ok runs only.

    A setting where any run failed or diverged gets ``NaN`` (it is not a candidate).
    Returns a DataFrame with the setting's option columns, ``metric`` and ``runs`` (how
    many runs, e.g. seeds, the mean is over).
    """
    import numpy as np

    if metric not in df:
        raise SweepConfigError(
            f"unknown metric {metric!r}; choose one of {', '.join(RESULT_COLUMNS[:3])}"
        )
    opts = [c for c in option_columns(df) if c not in average_over]
    d = df.copy()
    d["_value"] = d[metric].where(d["status"] == STATUS_OK, np.nan)
    g = d.groupby(opts, dropna=False, sort=True)
    out = g["_value"].agg(lambda s: s.mean() if s.notna().all() else np.nan)
    out = out.rename(metric).to_frame()
    out["runs"] = g.size()
    return out.reset_index()


def best_settings(
    df,
    metric: str = "final_train_loss",
    by: Sequence[str] | None = None,
    average_over: Sequence[str] = ("seed",),
):
    """The best setting per group (default: per method and data set): the papers' tables.

    The metric is averaged over ``average_over`` (seeds) first; a setting with a failed or
    diverged run is not a candidate; ties go to the first setting in sorted order.

    Returns
    -------
    pandas.DataFrame
        One row per group: the group keys, the best setting's options, ``metric``,
        ``runs``.
    """
    table = setting_table(df, metric, average_over)
    keys = [k for k in group_keys(df, by) if k in table]
    cand = table[table[metric].notna()]
    if keys:
        idx = cand.groupby(keys, dropna=False, sort=True)[metric].idxmin()
        return cand.loc[idx.to_numpy()].reset_index(drop=True)
    return cand.loc[[cand[metric].idxmin()]].reset_index(drop=True) if len(cand) else cand
