"""pipeline.labels on the tests' own label files and on the real AudioSet ontology."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import labels, params


def test_small_ontology_mapping(small_data):
    cm = labels.build_class_map(small_data["labels_csv"], small_data["ontology"])
    assert cm.names == params.CLASS_NAMES
    assert cm.mids == ("/m/09x0r", "/m/0jbk", "/m/04rlf", "/m/07yv9")
    assert cm.label_indices == ((0, 1), (2, 3), (4, 5), (6, 7))  # the cycle Vehicle<->Car terminates
    direct = labels.build_class_map(small_data["labels_csv"], None, mapping="direct")
    assert direct.label_indices == ((0,), (2,), (4,), (6,))
    y = np.zeros((3, 10), np.uint8)
    y[0, 1] = 1  # male speech -> Speech
    y[1, [3, 5]] = 1  # dog + guitar -> Animal, Music
    y[2, 9] = 1  # noise -> none
    np.testing.assert_array_equal(cm.targets(y), [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(direct.targets(y), [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.targets_from_indices([[1], [3, 5], [9]]), cm.targets(y))
    again = labels.ClassMap.from_metadata(cm.to_metadata(), num_labels=10)
    assert again == cm


def test_errors_name_the_file(tmp_path, small_data):
    with pytest.raises(labels.LabelDataError, match="nowhere.csv"):
        labels.build_class_map(tmp_path / "nowhere.csv", small_data["ontology"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(labels.LabelDataError, match="bad.json"):
        labels.build_class_map(small_data["labels_csv"], bad)
    with pytest.raises(ValueError, match="mapping"):
        labels.build_class_map(small_data["labels_csv"], small_data["ontology"], mapping="fuzzy")
    with pytest.raises(ValueError, match=r"\[N, 10\]"):
        labels.build_class_map(small_data["labels_csv"], small_data["ontology"]).targets(np.zeros((2, 5)))


def test_find_metadata_near_data(small_data, tmp_path):
    csv_path, onto = labels.find_audioset_metadata(small_data["data"] / "000.tfrecord")
    assert csv_path == small_data["labels_csv"].resolve() and onto == small_data["ontology"].resolve()
    with pytest.raises(labels.LabelDataError, match="--labels-csv"):
        labels.find_audioset_metadata(tmp_path, levels=0)


def test_real_ontology(shared_dir):
    root = shared_dir / "audioset"
    cm = labels.build_class_map(root / "class_labels_indices.csv", root / "ontology.json")
    names = {l.index: l.name for l in labels.read_label_index(root / "class_labels_indices.csv")}
    assert cm.num_labels == 527
    speech, animal, music, vehicle = (set(i) for i in cm.label_indices)
    assert {names[i] for i in speech} >= {"Speech", "Male speech, man speaking", "Conversation", "Narration, monologue"}
    assert len(speech) == 8 and len(animal) == 65 and len(music) == 150 and len(vehicle) == 44
    assert "Dog" in {names[i] for i in animal} and "Guitar" in {names[i] for i in music}
    assert "Car" in {names[i] for i in vehicle} and "Bark" in {names[i] for i in animal}
    assert not (speech & music) and not (animal & vehicle)
    direct = labels.build_class_map(root / "class_labels_indices.csv", mapping="direct")
    assert [names[i[0]] for i in direct.label_indices] == list(params.CLASS_NAMES)
