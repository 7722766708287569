"""Outcome models on the real Covid-MedIA cohort: loading, training, estimates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path

from covidct.errors import InputError
from covidct.prognosis.data import load_cohort_table, load_covid_media
from covidct.prognosis.evaluate import evaluate_model
from covidct.prognosis.model import load_model, save_model
from covidct.prognosis.predict import (
    PatientInfo,
    estimate_prognosis,
    load_bundled_model,
)
from covidct.prognosis.train import TrainingOptions, train_prognosis

# A reduced procedure (few splits, three pool members) that keeps the tests short.
FAST = TrainingOptions(
    selection_splits=3,
    tuning_splits=2,
    feature_counts=(3, 5),
    pool=["logistic_regression", "extra_trees", "naive_bayes"],
    members=3,
    max_gap=0.1,
)


@pytest.fixture(scope="module")
def media_dir() -> Path:
    return shared_path("covid-media")


@pytest.fixture(scope="module")
def cohort(media_dir):
    return load_covid_media(media_dir)


@pytest.fixture(scope="module")
def fast_model(cohort):
    return train_prognosis(cohort, FAST)


def test_covid_media_split_sizes(cohort):
    assert (cohort.split == "train").sum() == 536
    assert (cohort.split == "test").sum() == 157
    assert cohort.outcome2[cohort.split == "test"].sum() == 31
    assert cohort.outcome3 is not None
    assert set(cohort.outcome3.unique()) == {0, 1, 2}


def test_covid_media_unit_errors_become_missing(cohort):
    assert cohort.features["CRP"].max() <= 600
    assert cohort.features["Lymphocytes"].max() <= 5
    assert not np.isclose(cohort.features["CRP"], 203.34252, atol=1e-3).any()


def test_missing_column_names_file(media_dir, tmp_path):
    copy = tmp_path / "media"
    shutil.copytree(media_dir, copy)
    path = copy / "dataset_clinical_Test.csv"
    pd.read_csv(path, index_col=0).drop(columns=["Age"]).to_csv(path)
    with pytest.raises(InputError) as error:
        load_covid_media(copy)
    assert "dataset_clinical_Test.csv" in str(error.value)
    assert "Age" in str(error.value)


def test_non_numeric_column_names_file(media_dir, tmp_path):
    copy = tmp_path / "media"
    shutil.copytree(media_dir, copy)
    path = copy / "dataset_heart_Train.csv"
    table = pd.read_csv(path, index_col=0)
    column = "original_shape_VoxelVolume_heart"
    table[column] = table[column].astype(object)
    table.loc[table.index[4], column] = "12 ml"
    table.to_csv(path)
    with pytest.raises(InputError) as error:
        load_covid_media(copy)
    assert "dataset_heart_Train.csv" in str(error.value)
    assert column in str(error.value)


def _cohort_csv(cohort, path: Path) -> Path:
    """Write the cohort as covidct's own table: biomarker rows plus patient columns."""
    table = cohort.features.copy()
    table["Sex"] = table["Sex"].map({1.0: "M", 0.0: "F"})
    names = {0: "non_severe", 1: "intubated", 2: "deceased"}
    table["outcome"] = cohort.outcome3.map(names)
    table["split"] = cohort.split
    table.to_csv(path, index_label="patient")
    return path


def test_cohort_table_reads_back(cohort, tmp_path):
    loaded = load_cohort_table(_cohort_csv(cohort, tmp_path / "c.csv"), "outcome")
    assert len(loaded.features) == 693
    assert loaded.outcome2.sum() == cohort.outcome2.sum()
    assert loaded.features["Sex"].sum() == cohort.features["Sex"].sum()


def test_batch_cohort_csv_is_read(cohort, tmp_path):
    """The cohort.csv of covidct batch: manifest spellings and a status column."""
    path = _cohort_csv(cohort, tmp_path / "c.csv")
    table = pd.read_csv(path)
    table = table.rename(
        columns={"patient": "study_id", "Age": "age", "Sex": "sex", "CRP": "crp"}
    )
    status = pd.Series("done", index=table.index, name="status")
    status.iloc[:3] = "failed"
    table = pd.concat([table.iloc[:, :1], status, table.iloc[:, 1:]], axis=1)
    table.to_csv(path, index=False)

    loaded = load_cohort_table(path, "outcome")
    assert len(loaded.features) == 690
    assert "Age" in loaded.features.columns
    assert loaded.features.index[0] == table["study_id"].iloc[3]


def test_cohort_table_missing_outcome(cohort, tmp_path):
    path = _cohort_csv(cohort, tmp_path / "c.csv")
    with pytest.raises(InputError) as error:
        load_cohort_table(path, "Evolution")
    assert "c.csv" in str(error.value)
    assert "Evolution" in str(error.value)


def test_cohort_table_unknown_outcome(cohort, tmp_path):
    path = _cohort_csv(cohort, tmp_path / "c.csv")
    table = pd.read_csv(path)
    table.loc[3, "outcome"] = "discharged"
    table.to_csv(path, index=False)
    with pytest.raises(InputError, match="discharged"):
        load_cohort_table(path, "outcome")


def test_pipeline_beats_chance(cohort, fast_model):
    metrics = evaluate_model(fast_model, cohort)
    binary = metrics["binary"]
    assert binary["patients"] == 157
    assert binary["auc"] > 0.65
    assert binary["auc_95ci"][0] < binary["auc"] < binary["auc_95ci"][1]
    assert metrics["three_class"]["auc_macro_ovr"] > 0.6
    assert metrics["baselines"]["extent_alone"]["auc"] == pytest.approx(0.741, abs=1e-3)
    rule = metrics["baselines"]["extent_above_25_percent"]
    assert rule["balanced_accuracy"] == pytest.approx(0.684, abs=1e-3)


def test_training_ignores_test_rows(cohort, fast_model):
    """Scrambling every test row must leave the trained model unchanged."""
    scrambled = load_covid_media(shared_path("covid-media"))
    test = scrambled.split == "test"
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(int(test.sum()), scrambled.features.shape[1]))
    scrambled.features.loc[test] = noise
    scrambled.outcome2.loc[test] = 1 - scrambled.outcome2[test]
    options = TrainingOptions(**{**vars(FAST), "three_class": False})
    model = train_prognosis(scrambled, options)
    assert model.binary.features == fast_model.binary.features
    train_rows = cohort.features[cohort.split == "train"]
    np.testing.assert_allclose(
        model.binary.predict_proba(train_rows),
        fast_model.binary.predict_proba(train_rows),
    )


def test_skops_round_trip(cohort, fast_model, tmp_path):
    path = save_model(fast_model, tmp_path / "model.skops")
    loaded = load_model(path)
    rows = cohort.features[cohort.split == "test"]
    np.testing.assert_array_equal(
        loaded.binary.predict_proba(rows), fast_model.binary.predict_proba(rows)
    )
    assert loaded.binary.features == fast_model.binary.features


class Untrusted:
    """A type outside the trusted list of model files."""


def test_untrusted_type_is_rejected(tmp_path):
    import skops.io

    path = tmp_path / "bad.skops"
    skops.io.dump({"payload": Untrusted()}, path)
    with pytest.raises(InputError, match="untrusted"):
        load_model(path)


def _training_measures(cohort, position: int = 0) -> dict[str, float]:
    row = cohort.features[cohort.split == "train"].iloc[position]
    return {name: float(value) for name, value in row.items()}


def test_estimate_without_age_is_explained(cohort):
    result, warnings = estimate_prognosis(
        _training_measures(cohort), PatientInfo(sex="F")
    )
    assert result["status"] == "not estimated"
    assert "age" in result["reason"]
    assert warnings == []


def test_missing_clinical_input_is_imputed(cohort):
    patient = PatientInfo(age=63, sex="F", lymphocytes=0.9)
    result, warnings = estimate_prognosis(_training_measures(cohort), patient)
    model = load_bundled_model("clinical")
    assert result["status"] == "estimated"
    assert result["model"] == "clinical"
    expected = ["CRP"] if "CRP" in model.features else []
    assert result["imputed_inputs"] == expected
    assert 0 <= result["probability_severe"] <= 1
    assert sum(result["three_class"]["probabilities"].values()) == pytest.approx(
        1, abs=1e-3
    )


def test_imaging_model_without_clinical_inputs(cohort):
    result, _ = estimate_prognosis(_training_measures(cohort), PatientInfo(63, "M"))
    assert result["model"] == "imaging"
    assert result["predicted_class"] in ("non_severe", "severe")
    assert result["risk_up"] or result["risk_down"]


def test_clinical_falls_back_to_imaging(cohort):
    """A study without left lesions: the clinical model needs their minimum HU."""
    measures = _training_measures(cohort)
    measures["original_firstorder_Minimum_disease_left"] = None
    patient = PatientInfo(age=63, sex="F", crp=54, lymphocytes=0.9)
    result, warnings = estimate_prognosis(measures, patient)
    assert result["status"] == "estimated"
    assert result["model"] == "imaging"
    assert any("clinical outcome model could not be used" in w for w in warnings)


def test_out_of_range_input_is_flagged(cohort):
    model = load_bundled_model("imaging")
    measures = _training_measures(cohort)
    feature = next(name for name in model.features if name not in ("Age", "Sex"))
    measures[feature] = model.reference[feature]["max"] * 10 + 1
    result, warnings = estimate_prognosis(measures, PatientInfo(63, "M"))
    assert [item["feature"] for item in result["out_of_range"]] == [feature]
    assert any(feature in message for message in warnings)


def test_missing_radiomics_is_explained(cohort):
    measures = {"Disease_extent": 30.0}
    result, _ = estimate_prognosis(measures, PatientInfo(63, "M"))
    assert result["status"] == "not estimated"
    assert "radiomics" in result["reason"]


def test_lymphocyte_percentage_is_rejected():
    with pytest.raises(InputError, match="10\\^9/l"):
        PatientInfo(age=63, sex="F", lymphocytes=25)


def test_evaluate_command_writes_page(media_dir, tmp_path):
    from covidct.cli.main import main

    status = main(["evaluate-prognosis", str(media_dir), "-o", str(tmp_path)])
    assert status == 0
    assert (tmp_path / "evaluation_imaging.md").is_file()
    assert (tmp_path / "roc_imaging.png").is_file()
    assert (tmp_path / "calibration_imaging.png").is_file()
