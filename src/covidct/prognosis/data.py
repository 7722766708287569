"""Feature tables and outcomes of a cohort, read from the Covid-MedIA release or a CSV.

Two layouts are read:

- the Covid-MedIA release of Chassagnon et al., "AI-driven quantification, staging
  and outcome prediction of COVID-19 pneumonia", Medical Image Analysis 67:101860
  (2021): one CSV per region and split (``dataset_<region>_<Train|Test>.csv``) and
  ``dataset_clinical_<split>.csv``, joined on their first (unnamed) column, the
  patient number;
- covidct's own cohort table: rows of ``biomarkers.csv`` as written by
  ``covidct analyze``, one per patient, with the columns ``Age`` and ``Sex`` added,
  optionally ``HBP``, ``Diabetes``, ``Lymphocytes`` and ``CRP``, an outcome column
  and optionally a ``split`` column. The ``cohort.csv`` of ``covidct batch`` is
  such a table: its manifest columns ``age``, ``sex``, ``hypertension``,
  ``diabetes``, ``lymphocytes`` and ``crp`` are read in any case, and rows whose
  ``status`` is not ``done`` are left out.

Units and codes follow the Covid-MedIA tables. ``Age`` is in years. ``Sex`` is 1
for male and 0 for female, inferred because 66 % of the cohort and 80 % of its
severe patients are coded 1, as expected of men in COVID-19 cohorts. ``HBP``
(hypertension) and ``Diabetes`` are 0 or 1. ``Lymphocytes`` are in 10^9 cells/l,
``CRP`` in mg/l and ``Disease_extent`` in % of the lung volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from covidct.errors import InputError

__all__ = [
    "BASE_INPUTS",
    "CLASSES_2",
    "CLASSES_3",
    "CLINICAL_INPUTS",
    "EXTENT",
    "REGIONS",
    "Cohort",
    "clean_clinical",
    "input_columns",
    "load_cohort_table",
    "load_covid_media",
]

logger = logging.getLogger(__name__)

#: Regions of the radiomics tables. Left and right are the patient's sides.
REGIONS = ("disease_left", "disease_right", "lung_left", "lung_right", "heart")

#: Lesion volume over lung volume, in %, under its Covid-MedIA name.
EXTENT = "Disease_extent"

#: Patient inputs every model needs.
BASE_INPUTS = ("Age", "Sex")

#: Optional clinical inputs: hypertension (0/1), diabetes (0/1), lymphocyte count
#: (10^9/l) and C-reactive protein (mg/l).
CLINICAL_INPUTS = ("HBP", "Diabetes", "Lymphocytes", "CRP")

#: Class names of the two outcome tasks, in the order of the model's columns.
CLASSES_2 = ("non_severe", "severe")
CLASSES_3 = ("non_severe", "intubated", "deceased")

# Spellings of the outcome accepted in tables, mapped to the 3-class names.
_OUTCOME_ALIASES = {
    "non_severe": "non_severe",
    "non-severe": "non_severe",
    "0": "non_severe",
    "severe": "severe",
    "1": "severe",
    "iot": "intubated",
    "intubated": "intubated",
    "dcd": "deceased",
    "deceased": "deceased",
}

# PyRadiomics classes whose values do not depend on grey-level binning.
_BINNING_FREE_CLASSES = ("shape", "firstorder")
# First-order features computed on the binned image, so they depend on binning.
_BINNED_FIRST_ORDER = ("Entropy", "Uniformity")

# Training means that the release wrote in place of missing values.
_IMPUTED_MEANS = {"Lymphocytes": 11.099047619047619, "CRP": 203.34252}
# Largest plausible values. Larger ones in the release look like unit errors, such
# as a CRP of 27,633 mg/l or lymphocyte counts of 10 to 80 (percentages).
PLAUSIBLE_MAX = {"Lymphocytes": 5.0, "CRP": 600.0, "Age": 120.0}


@dataclass
class Cohort:
    """Feature table and outcomes of the patients of one cohort.

    Attributes:
        features: One row per patient (index: patient id), one column per
            feature, numeric, NaN where missing.
        outcome2: 0 non-severe, 1 severe, per patient.
        outcome3: 0 non-severe, 1 intubated, 2 deceased, or None when the table
            has only two classes.
        split: ``"train"`` or ``"test"`` per patient.
        source: The file or folder read.
        split_rule: How the split was made.
    """

    features: pd.DataFrame
    outcome2: pd.Series
    outcome3: pd.Series | None
    split: pd.Series
    source: str
    split_rule: str

    def subset(self, name: str) -> Cohort:
        """Return the patients of one split (``"train"`` or ``"test"``)."""
        keep = self.split == name
        return Cohort(
            features=self.features[keep],
            outcome2=self.outcome2[keep],
            outcome3=None if self.outcome3 is None else self.outcome3[keep],
            split=self.split[keep],
            source=self.source,
            split_rule=self.split_rule,
        )


def input_columns(
    columns: list[str], clinical: bool, textures: bool = False
) -> list[str]:
    """Select the candidate model inputs among the columns of a feature table.

    Args:
        columns: Column names of the table.
        clinical: Also use the clinical inputs of ``CLINICAL_INPUTS``.
        textures: Also use texture features and the binned first-order
            features. Their values depend on the PyRadiomics bin width: in the
            cohort they describe a binary map above or below the scan's mean.

    Returns:
        Age, sex, extent, the clinical inputs if requested, then the radiomics
        features present in ``columns``, in that order.
    """
    chosen = [*BASE_INPUTS, EXTENT]
    if clinical:
        chosen += list(CLINICAL_INPUTS)
    for column in columns:
        if not column.startswith("original_") or not column.endswith(REGIONS):
            continue
        feature_class, name = column.split("_")[1:3]
        binned = name in _BINNED_FIRST_ORDER
        binning_free = feature_class in _BINNING_FREE_CLASSES and not binned
        if textures or binning_free:
            chosen.append(column)
    return chosen


def load_covid_media(folder: str | Path) -> Cohort:
    """Read the Covid-MedIA feature tables and outcomes, both splits.

    Args:
        folder: The folder of ``dataset_<region>_<Train|Test>.csv`` and
            ``dataset_clinical_<Train|Test>.csv``.

    Returns:
        The cohort, clinical values cleaned by :func:`clean_clinical`, with the
        release's split (the test patients are whole held-out centres).

    Raises:
        InputError: If a file or column is missing or not numeric.
    """
    folder = Path(folder)
    parts = []
    for split_name in ("Train", "Test"):
        clinical_path = folder / f"dataset_clinical_{split_name}.csv"
        table = _read_csv(clinical_path)
        _require_columns(
            table,
            [*BASE_INPUTS, EXTENT, *CLINICAL_INPUTS, "Evolution", "Evolution_3classes"],
            clinical_path,
        )
        region_tables = []
        for region in REGIONS:
            path = folder / f"dataset_{region}_{split_name}.csv"
            region_table = _read_csv(path)
            if not region_table.index.equals(table.index):
                raise InputError(
                    f"the patient numbers of the first column differ from those of "
                    f"{clinical_path.name}",
                    path,
                    "use the files of one release, unmodified",
                )
            _check_numeric(region_table, list(region_table.columns), path)
            region_tables.append(region_table)
        table = pd.concat([table, *region_tables], axis=1).copy()
        table["split"] = split_name.lower()
        parts.append(table)
    table = pd.concat(parts)
    outcome3 = _parse_outcome(table["Evolution_3classes"], folder, "Evolution_3classes")
    features = table.drop(columns=["Evolution", "Evolution_3classes", "split", "Fat"])
    _check_numeric(features, list(features.columns), folder)
    return Cohort(
        features=clean_clinical(features),
        outcome2=(outcome3 > 0).astype(int),
        outcome3=outcome3,
        split=table["split"],
        source=str(folder),
        split_rule="the release's split: 536 training patients, 157 test patients",
    )


#: Manifest spellings of the patient columns (as ``covidct batch`` passes them
#: through to cohort.csv), matched without regard to case.
_BATCH_NAMES = {
    "age": "Age",
    "sex": "Sex",
    "hypertension": "HBP",
    "hbp": "HBP",
    "diabetes": "Diabetes",
    "lymphocytes": "Lymphocytes",
    "crp": "CRP",
}


def _batch_column_names(columns: list[str]) -> dict[str, str]:
    """Map manifest spellings such as ``age`` to the cohort's ``Age``."""
    present = set(columns)
    renames = {}
    for column in columns:
        target = _BATCH_NAMES.get(column.strip().lower())
        if target is not None and column != target and target not in present:
            renames[column] = target
    return renames


def load_cohort_table(
    path: str | Path,
    outcome: str,
    split_column: str = "split",
    test_fraction: float = 0.25,
    seed: int = 10,
) -> Cohort:
    """Read covidct's cohort table: biomarker rows plus patient and outcome columns.

    Args:
        path: CSV file, one row per patient.
        outcome: Column of the outcome: ``non_severe``/``severe`` or 0/1, or three
            classes ``non_severe``/``intubated``/``deceased`` (``IOT`` and ``DCD``
            are accepted as in the Covid-MedIA tables).
        split_column: Column with ``train`` or ``test`` per row. When the table has
            no such column, a stratified random split is made.
        test_fraction: Share of patients in the test split of a random split.
        seed: Seed of the random split.

    Raises:
        InputError: If a required column is missing or a value cannot be read.
    """
    path = Path(path)
    table = _read_csv(path, index_col=None)
    table = table.rename(columns=_batch_column_names(list(table.columns)))
    if "status" in table.columns:
        # covidct batch lists failed and pending studies too, without measures.
        done = table["status"].astype(str).str.strip().str.lower() == "done"
        if not done.all():
            logger.info(
                "%s: left out %d rows whose status is not done",
                path,
                int((~done).sum()),
            )
        table = table[done]
    _require_columns(table, [*BASE_INPUTS, EXTENT, outcome], path)
    if "patient" in table.columns:
        patients = table["patient"]
    elif "study_id" in table.columns:
        patients = table["study_id"]
    else:
        patients = table.index
    table.index = pd.Index(patients, name="patient")
    outcome_labels = _parse_outcome(table[outcome], path, outcome)
    has_three = bool(
        (outcome_labels > 1).any()
        or table[outcome]
        .astype(str)
        .str.lower()
        .isin(["iot", "intubated", "dcd", "deceased"])
        .any()
    )
    table["Sex"] = _parse_sex(table["Sex"], path)
    features = table[
        input_columns(list(table.columns), clinical=False, textures=True)
        + [c for c in CLINICAL_INPUTS if c in table.columns]
    ]
    _check_numeric(features, list(features.columns), path)
    if split_column in table.columns:
        split = table[split_column].astype(str).str.strip().str.lower()
        wrong = sorted(set(split) - {"train", "test"})
        if wrong:
            raise InputError(
                f'column "{split_column}" contains {wrong[:3]}, expected "train" or '
                '"test"',
                path,
                "write train or test in every row, or drop the column to split at "
                "random",
            )
        rule = f'the table\'s column "{split_column}"'
    else:
        train_ids, _ = train_test_split(
            table.index,
            test_size=test_fraction,
            stratify=outcome_labels,
            random_state=seed,
        )
        split = pd.Series("test", index=table.index)
        split[train_ids] = "train"
        rule = (
            f"stratified random split, {100 * test_fraction:g} % test, seed {seed} "
            f'(the table has no column "{split_column}")'
        )
        logger.warning("%s: %s", path, rule)
    return Cohort(
        features=clean_clinical(features.astype(float)),
        outcome2=(outcome_labels > 0).astype(int),
        outcome3=outcome_labels if has_three else None,
        split=split,
        source=str(path),
        split_rule=rule,
    )


def clean_clinical(features: pd.DataFrame) -> pd.DataFrame:
    """Replace imputed and implausible clinical values by NaN.

    The Covid-MedIA release filled missing lymphocyte and CRP values with the
    training mean and holds values that look like unit errors. Both become NaN,
    so that the models impute from the training split themselves. Binary inputs
    that are neither 0 nor 1 (mean-imputed in the release) become NaN as well.

    Returns:
        A copy of ``features``; each change is logged.
    """
    cleaned = features.copy()
    for column, mean in _IMPUTED_MEANS.items():
        if column in cleaned.columns:
            imputed = np.isclose(cleaned[column], mean, rtol=0, atol=1e-3)
            _blank(cleaned, column, imputed, "equal to the release's imputed mean")
    for column, maximum in PLAUSIBLE_MAX.items():
        if column in cleaned.columns:
            _blank(cleaned, column, cleaned[column] > maximum, f"above {maximum:g}")
            _blank(cleaned, column, cleaned[column] < 0, "negative")
    for column in ("Sex", "HBP", "Diabetes"):
        if column in cleaned.columns:
            values = cleaned[column]
            _blank(cleaned, column, values.notna() & ~values.isin([0, 1]), "not 0 or 1")
    return cleaned


def _blank(table: pd.DataFrame, column: str, rows: pd.Series, why: str) -> None:
    count = int(np.count_nonzero(rows))
    if count:
        logger.info("%s: %d value(s) %s set to missing", column, count, why)
        table.loc[rows, column] = np.nan


def _read_csv(path: Path, index_col: int | None = 0) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(
            "feature table not found", path, "check the folder or the file name"
        )
    try:
        return pd.read_csv(path, index_col=index_col)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise InputError(
            f"cannot be read as CSV: {error}", path, "save the table as plain CSV"
        ) from error


def _require_columns(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}",
            path,
            "add the column(s) with the names and units documented in "
            "covidct.prognosis.data",
        )


def _check_numeric(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            example = table[column][bad].iloc[0]
            raise InputError(
                f'column "{column}" contains the non-numeric value {example!r}',
                path,
                "write numbers only (leave a cell empty when the value is missing)",
            )


def _parse_outcome(values: pd.Series, path: str | Path, column: str) -> pd.Series:
    """Map outcome labels to 0 non-severe, 1 intubated or severe, 2 deceased."""
    text = values.astype(str).str.strip().str.lower().str.removesuffix(".0")
    names = text.map(_OUTCOME_ALIASES)
    if names.isna().any():
        unknown = sorted(set(values[names.isna()].astype(str)))
        raise InputError(
            f'column "{column}" contains the unknown outcome(s) {unknown[:5]}',
            path,
            "use non_severe/severe (or 0/1), or non_severe/intubated/deceased",
        )
    codes = {"non_severe": 0, "severe": 1, "intubated": 1, "deceased": 2}
    return names.map(codes).astype(int)


def _parse_sex(values: pd.Series, path: Path) -> pd.Series:
    """Map M/F (any case) or 1/0 to the cohort's code, 1 male and 0 female."""
    text = values.astype(str).str.strip().str.upper().str.removesuffix(".0")
    codes = text.map(
        {"M": 1.0, "F": 0.0, "1": 1.0, "0": 0.0, "NAN": np.nan, "": np.nan}
    )
    if codes.isna().sum() > (text.isin(["NAN", ""])).sum():
        unknown = sorted(
            set(values[codes.isna() & ~text.isin(["NAN", ""])].astype(str))
        )
        raise InputError(
            f'column "Sex" contains {unknown[:3]}, expected M, F, 1 (male) or 0 '
            "(female)",
            path,
            "recode the column",
        )
    return codes
