"""Where the daemon finds its model files when none is given: the files `scripts/setup` leaves in
the data directory, the edge file for LiteRT."""

from __future__ import annotations

from daemon.config import load_config


def test_litert_defaults_to_the_edge_file_setup_builds_and_a_given_vggish_wins(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("AUDIOCAP_DATA_DIR", str(data))
    conf = tmp_path / "audiocap.toml"
    conf.write_text("")
    # Nothing there yet: LiteRT keeps the ordinary default (start-up then names what is missing).
    before = load_config(conf, {("model", "runtime"): ("litert", "--runtime")}).model.vggish
    assert not before.endswith(".tflite")
    for name in ("vggish_model.ckpt", "vggish_int8.tflite"):
        (data / name).write_bytes(b"")
    tf = load_config(conf).model
    lite = load_config(conf, {("model", "runtime"): ("litert", "--runtime")}).model
    assert (tf.runtime, tf.vggish) == ("tensorflow", str(data / "vggish_model.ckpt"))
    assert (lite.runtime, lite.vggish) == ("litert", str(data / "vggish_int8.tflite"))
    given = tmp_path / "mine.tflite"
    chosen = load_config(conf, {("model", "runtime"): ("litert", "--runtime"),
                                ("model", "vggish"): (str(given), "--vggish")}).model
    assert chosen.vggish == str(given)
    conf.write_text('[model]\nruntime = "litert"\n')
    assert load_config(conf).model.vggish == str(data / "vggish_int8.tflite")
