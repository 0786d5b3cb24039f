"""`robench export --per-sample` (issue 20.5): one row per model x cell x sample with the sample's identity, label,
prediction, verdict, and for attacks the prediction on the final (adversarial) image. The store is filled here
through Store's own methods (as the engine does), so every expected value below is written by the test."""

import json

import pandas as pd
import pytest

from robench.errors import RobenchError
from robench.run.export import PER_SAMPLE_COLUMNS, export, per_sample
from robench.run.store import Store

FP = "folder:/data/x#abc"
IDS = ["cat/001.png", "dog/002.png", "cat/003.png"]
LABELS = [3, 5, 3]
CLEAN_PRED = [3, 1, 3]  # sample 1 misclassified
ADV_PRED = [7, 1, 3]  # sample 0 flipped by the attack; sample 1 was already wrong


def _store(path, sample_ids=True) -> Store:
    s = Store(path, create=True)
    run = s.start_run(seed=0)
    m = s.model_id(label="vit", name="demo-quest", variant="quest", arch="demo-vit", params=1,
                   checkpoint="w.safetensors", checkpoint_sha256="ab" * 32)
    base = {"dataset": "digits", "data_fingerprint": FP, "n": 3, "protocol": "standard", "adaptive": False}
    c_clean = s.cell_id(m, {**base, "threat": "clean"}, 3, 1, run)
    c_att = s.cell_id(m, {**base, "threat": "attack", "attack": "pgd", "norm": "Linf", "eps": 4 / 255}, 3, 1, run)
    c_cor = s.cell_id(m, {**base, "threat": "corruption", "corruption": "fog", "severity": 2, "category": "weather"},
                      3, 1, run)
    correct = [int(p == y) for p, y in zip(CLEAN_PRED, LABELS)]
    robust = [int(p == y) for p, y in zip(ADV_PRED, LABELS)]
    s.write_chunk(0, {c_clean: ([0, 1, 2], correct, CLEAN_PRED), c_att: ([0, 1, 2], robust, ADV_PRED),
                      c_cor: ([0, 1, 2], [1, 0, 0], [3, 2, 2])}, run)
    for c in (c_clean, c_att, c_cor):
        assert s.finish_cell(c)
    if sample_ids:
        s.put_sample_ids(FP, IDS, LABELS)
        s.put_sample_ids(FP, IDS, LABELS)  # idempotent
    return s


def test_per_sample_rows(tmp_path):
    df = per_sample(_store(tmp_path / "s"))
    assert list(df.columns) == PER_SAMPLE_COLUMNS
    assert len(df) == 9  # 3 cells x 3 samples
    att = df[df["threat"] == "attack"].set_index("sample")
    assert att["sample_id"].tolist() == IDS
    assert att["label"].tolist() == LABELS
    assert att["pred"].tolist() == CLEAN_PRED  # the prediction on the clean image
    assert att["final_pred"].tolist() == ADV_PRED  # on the adversarial one
    assert att["correct"].tolist() == [0, 0, 1]
    cl = df[df["threat"] == "clean"].set_index("sample")
    assert cl["pred"].tolist() == CLEAN_PRED and cl["correct"].tolist() == [1, 0, 1]
    assert cl["final_pred"].isna().all()
    cor = df[df["threat"] == "corruption"]
    assert cor["pred"].tolist() == [3, 2, 2] and set(cor["severity"]) == {2} and set(cor["corruption"]) == {"fog"}
    assert set(df["checkpoint_sha256"]) == {"ab" * 32} and set(df["model"]) == {"vit"}
    assert df["data_fingerprint"].eq(FP).all()


def test_sample_ids_fall_back_to_the_index(tmp_path):
    df = per_sample(_store(tmp_path / "s", sample_ids=False))
    assert df[df["threat"] == "clean"]["sample_id"].tolist() == ["0", "1", "2"]
    assert df["label"].isna().all()


def test_put_sample_ids_checks_lengths(tmp_path):
    s = _store(tmp_path / "s")
    with pytest.raises(RobenchError, match="2 labels for 3 sample ids"):
        s.put_sample_ids(FP, IDS, [1, 2])
    assert s.db.execute("SELECT COUNT(*) FROM sample_ids").fetchone()[0] == 3


@pytest.mark.parametrize("name", ["p.csv", "p.jsonl", "p.json"])
def test_cli_per_sample_export(tmp_path, run_cli, name):
    _store(tmp_path / "s").close()
    code, out, err = run_cli("export", tmp_path / "s", "--per-sample", "--out", tmp_path / name)
    assert code == 0, err
    path = tmp_path / name
    df = (pd.read_csv(path) if name.endswith(".csv") else pd.read_json(path, lines=name.endswith(".jsonl")))
    assert len(df) == 9
    row = df[(df["threat"] == "attack") & (df["sample"] == 0)].iloc[0]
    assert (row["sample_id"], row["label"], row["pred"], row["final_pred"], row["correct"]) == ("cat/001.png", 3, 3,
                                                                                                7, 0)


def test_parquet_per_sample_export(tmp_path):
    pytest.importorskip("pyarrow")
    s = _store(tmp_path / "s")
    export(s, tmp_path / "p.parquet", table="samples")
    df = pd.read_parquet(tmp_path / "p.parquet")
    assert df[df["threat"] == "attack"]["final_pred"].tolist() == ADV_PRED


def test_old_store_without_sample_ids_table_reads(tmp_path):
    """A store written before the sample_ids table existed: read-only export falls back to the index; a writer
    adds the table."""
    s = _store(tmp_path / "s", sample_ids=False)
    s.db.execute("DROP TABLE sample_ids")
    s.close()
    r = Store(tmp_path / "s", readonly=True)
    assert not r.has_table("sample_ids")
    assert per_sample(r)["sample_id"].tolist()[:3] == ["0", "1", "2"]
    r.close()
    w = Store(tmp_path / "s", create=True)
    assert w.has_table("sample_ids")
    w.put_sample_ids(FP, IDS)
    assert json.loads(per_sample(w).to_json(orient="records"))[0]["sample_id"] == "cat/001.png"


def test_an_evaluation_records_each_samples_identity_and_label(tmp_path):
    """Through the engine: the exported rows name the evaluated file of the --limit selection and its true label."""
    import torch

    from robench.data.formats import load_clean, parse_data
    from robench.run import ModelEntry, Plan, run_plan
    from robench.zoo import create_model

    run_plan(Plan(models=[ModelEntry("demo-standard")], data="digits", limit=12, out=str(tmp_path), quiet=True))
    rows = per_sample(Store(tmp_path, readonly=True))
    model = create_model("demo-standard")
    data = load_clean(parse_data("digits"), model.info, limit=12)
    assert list(rows["sample_id"]) == list(data.sample_ids)  # the --limit selection, by position
    truth = [int(data.dataset[i][1]) for i in range(len(data))]  # labels read from the images' own items
    assert list(rows["label"]) == truth
    with torch.no_grad():
        pred = model(torch.stack([data.dataset[i][0] for i in range(len(data))])).argmax(1).tolist()
    assert list(rows["pred"]) == pred and list(rows["correct"]) == [int(p == t) for p, t in zip(pred, truth)]
