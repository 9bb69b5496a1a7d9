"""What a bundle's metadata says about its classes: caption texts and urgent flags, with old bundles' defaults."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.classifier import BundleError, default_bundle_path, read_metadata
from pipeline.events import DEFAULT_CAPTIONS


@pytest.fixture
def bundle(tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), out)
    return out


def _edit(bundle, change):
    path = bundle / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_old_bundles_get_the_default_captions_and_no_urgent_class(bundle):
    def strip(meta):
        for c in meta["classes"]:
            c.pop("caption", None)
            c.pop("urgent", None)

    _edit(bundle, strip)
    meta = read_metadata(bundle)
    assert meta["_captions"] == {n: DEFAULT_CAPTIONS[n] for n in meta["_class_names"]}
    assert set(meta["_urgent"].values()) == {False}


def test_captions_and_urgent_flags_are_read_and_checked(bundle):
    def flag(meta):
        meta["classes"][0].update(caption="[Someone talking]", urgent=True)

    _edit(bundle, flag)
    meta = read_metadata(bundle)
    first = meta["_class_names"][0]
    assert meta["_captions"][first] == "[Someone talking]" and meta["_urgent"][first] is True

    _edit(bundle, lambda m: m["classes"][1].update(urgent="yes"))
    with pytest.raises(BundleError, match=r"urgent 'yes'; expected true or false"):
        read_metadata(bundle)
    _edit(bundle, lambda m: m["classes"][1].update(urgent=False, caption=" "))
    with pytest.raises(BundleError, match="expected a non-empty string"):
        read_metadata(bundle)


def test_shipped_bundles_load_by_name_and_the_default_is_the_four_classes(tmp_path, monkeypatch):
    from pipeline import classifier

    assert default_bundle_path().name == classifier.DEFAULT_BUNDLE
    for name, path in classifier.shipped_bundles().items():
        assert classifier.resolve_bundle(name) == path
    # A directory of that name here wins over the shipped one; an unknown name lists what is shipped.
    monkeypatch.chdir(tmp_path)
    (tmp_path / classifier.DEFAULT_BUNDLE).mkdir()
    assert classifier.resolve_bundle(classifier.DEFAULT_BUNDLE).resolve() == tmp_path / classifier.DEFAULT_BUNDLE
    with pytest.raises(classifier.BundleNotFoundError, match=f"usable by name: .*{classifier.DEFAULT_BUNDLE}"):
        classifier.load_classifier("no-such-bundle")
