"""Class sets as data: the shipped sets resolve on the real ontology, and a wrong file says what and where in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.classset import ClassSetError, load_class_set, shipped_class_sets
from pipeline.labels import build_class_map


@pytest.fixture(scope="module")
def label_files(shared_dir):
    d = shared_dir / "audioset"
    csv, onto = d / "class_labels_indices.csv", d / "ontology.json"
    if not (csv.is_file() and onto.is_file()):
        pytest.skip("AudioSet label files not found in ../shared/audioset")
    return csv, onto


def test_the_four_class_set_is_the_default_map_and_the_shipped_bundle(label_files):
    from pipeline.classifier import load_classifier
    from pipeline.labels import ClassMap

    four = load_class_set("four").class_map(*label_files)
    ref = build_class_map(*label_files)
    assert (four.names, four.mids, four.label_indices) == (ref.names, ref.mids, ref.label_indices)
    shipped = ClassMap.from_metadata(load_classifier().metadata["classes"])
    assert shipped.label_indices == four.label_indices
    # The bundle's caption texts are the class set's.
    assert load_classifier().captions == dict(zip(four.names, four.captions))


def test_the_home_set_covers_the_alert_sounds_and_their_descendants(label_files):
    cs = load_class_set("home")
    assert set(shipped_class_sets()) >= {"four", "home"}
    cm = cs.class_map(*label_files)
    assert cm.names[:4] == ("Speech", "Animal", "Music", "Vehicle")
    assert dict(zip(cm.names, cm.urgent)) == {
        "Speech": False, "Animal": False, "Music": False, "Vehicle": False,
        "Alarm": True, "Doorbell or knock": True, "Baby crying": True, "Water running": False,
    }
    labels = {int(i): name for i, _, name in (line.split(",", 2) for line in
                                             label_files[0].read_text().splitlines()[1:])}
    covered = {n: {labels[i].strip('"') for i in idx} for n, idx in zip(cm.names, cm.label_indices)}
    assert {"Smoke detector, smoke alarm", "Fire alarm", "Siren", "Alarm"} <= covered["Alarm"]
    assert {"Doorbell", "Ding-dong", "Knock"} <= covered["Doorbell or knock"]
    assert covered["Water running"] == {"Water tap, faucet", "Sink (filling or washing)",
                                        "Bathtub (filling or washing)", "Toilet flush"}
    meta = cm.to_metadata()
    assert meta[4]["caption"] == "[Alarm]" and meta[4]["urgent"] is True and meta[5]["ontology"] == ["Doorbell", "Knock"]
    # A bundle's classes entry round-trips the class-set fields.
    from pipeline.labels import ClassMap

    assert ClassMap.from_metadata(meta) == cm


BAD = {
    "unknown key": ('name = "x"\ncolour = 1\n[[classes]]\nname = "A"\nontology = ["Alarm"]\n', r"unknown key\(s\) \['colour'\]"),
    "no classes": ('name = "x"\n', "no classes"),
    "not toml": ('name = "x\n', "not valid TOML"),
    "twice": ('[[classes]]\nname = "A"\nontology = ["Alarm"]\n[[classes]]\nname = "a"\nontology = ["Knock"]\n',
              "class 'a' appears twice"),
    "empty ontology": ('[[classes]]\nname = "A"\nontology = []\n', "class 'A': 'ontology' must be a non-empty list"),
    "urgent text": ('[[classes]]\nname = "A"\nontology = ["Alarm"]\nurgent = "yes"\n', "'urgent' must be true or false"),
    "slash": ('[[classes]]\nname = "A/B"\nontology = ["Alarm"]\n', "MQTT topics"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_wrong_class_set_file_names_the_file_and_the_problem(tmp_path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ClassSetError, match=message) as err:
        load_class_set(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_ontology_name_is_one_clear_line_from_fit(label_files, bal_train_dir, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('name = "typo"\n[[classes]]\nname = "Alarm"\nontology = ["Alarm"]\n'
                    '[[classes]]\nname = "Door"\nontology = ["Door bell"]\n')
    with pytest.raises(ClassSetError, match=r"class 'Door': unknown AudioSet ontology name 'Door bell'; did you mean "
                                            r"'Doorbell'"):
        load_class_set(path).class_map(*label_files)
    proc = subprocess.run([sys.executable, "-m", "train", "fit", "--classes", str(path), "--data", str(bal_train_dir),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith("ERROR")]
    assert len(lines) == 1 and "unknown AudioSet ontology name 'Door bell'" in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "run").exists()
    missing = subprocess.run([sys.executable, "-m", "train", "fit", "--classes", "kitchen", "--data",
                              str(bal_train_dir), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "usable by name: four, home" in missing.stderr
