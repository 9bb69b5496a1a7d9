"""The asset downloader: offline it fails at once, naming the URL and the fix;
online it checks the pinned hash and size before anything is kept (tested
against a real HTTP server on loopback serving made-up files)."""

import hashlib
import http.server
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import helpers


def test_offline_download_fails_fast_with_the_fix(tmp_path):
    out = tmp_path / "pca.npz"
    start = time.monotonic()
    # 127.0.0.1:9 (discard) refuses at once whatever the network: a stand-in for "offline".
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pipeline import assets; "
         "assets.ASSETS['pca'] = ('vggish_pca_params.npz', 'http://127.0.0.1:9/vggish_pca_params.npz', None); "
         f"sys.exit(assets.main(['pca', '--out', {str(out)!r}]))"],
        capture_output=True, text=True, cwd=helpers.REPO, timeout=60,
    )
    assert proc.returncode == 1
    assert time.monotonic() - start < 30
    assert "could not download vggish_pca_params.npz from http://127.0.0.1:9/" in proc.stderr
    assert f"copy the file to {out}" in proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_default_dir_honours_environment(tmp_path, monkeypatch):
    from pipeline import assets

    monkeypatch.setenv("AUDIOCAP_DATA_DIR", str(tmp_path))
    assert assets.default_path("pca") == tmp_path / "vggish_pca_params.npz"


# --- download + verify against a real HTTP server on loopback ---------------------


@pytest.fixture()
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the files of a directory."""
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _made_up(root, name, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (root / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def test_download_verifies_and_renames_into_place(server, tmp_path):
    from pipeline import assets

    root, base = server
    data, sha = _made_up(root, "ckpt", 3_000_001)
    dest = tmp_path / "out" / "vggish_model.ckpt"
    assert assets.download("vggish", dest, url=f"{base}/ckpt", sha256=sha, size=len(data)) == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["vggish_model.ckpt"]  # no temp file left


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_mismatch_is_refused_in_one_line_and_nothing_kept(server, tmp_path, wrong):
    from pipeline import assets

    root, base = server
    data, sha = _made_up(root, "ckpt", 2_000_000)
    dest = tmp_path / "out" / "vggish_model.ckpt"
    dest.parent.mkdir()
    kw = {"sha256": "0" * 64, "size": len(data)} if wrong == "sha256" else {"sha256": sha, "size": len(data) - 1}
    with pytest.raises(assets.AssetMismatch) as err:
        assets.download("vggish", dest, url=f"{base}/ckpt", **kw)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("refused vggish_model.ckpt") and "nothing was saved" in msg
    assert ("0" * 64 if wrong == "sha256" else f"more than {len(data) - 1:,} bytes") in msg
    assert list(dest.parent.iterdir()) == []


def test_the_checkpoint_pin_is_the_release(monkeypatch):
    from pipeline import assets

    assert assets.ASSETS["vggish"][2] == "0962b1914e3e053922d957c45bc84a78c985765641dc6bceeeb3a7d8dfecfdf6"
    assert assets.SIZES["vggish"] == 291_108_469


def _setup(tmp_path, env_assets: str, *extra: str) -> subprocess.CompletedProcess:
    code = ("import sys; from pipeline import assets; " + env_assets +
            f"sys.exit(assets.main(['setup', '--out', {str(tmp_path / 'models')!r}, *sys.argv[1:]]))")
    return subprocess.run([sys.executable, "-c", code, *extra], capture_output=True, text=True,
                          cwd=helpers.REPO, timeout=120)


def test_setup_offline_succeeds_with_one_line_naming_the_files(tmp_path):
    offline = ("assets.ASSETS.update(pca=('vggish_pca_params.npz', 'http://127.0.0.1:9/p', 'a' * 64), "
               "vggish=('vggish_model.ckpt', 'http://127.0.0.1:9/v', 'b' * 64)); ")
    proc = _setup(tmp_path, offline)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1, lines
    assert "offline" in lines[0] and "vggish_model.ckpt" in lines[0] and "vggish_pca_params.npz" in lines[0]
    assert str(tmp_path / "models") in lines[0] and "http://127.0.0.1:9/v" in lines[0]
    assert list((tmp_path / "models").iterdir()) == []


def test_edge_setup_fetches_the_pca_file_and_says_where_the_vggish_file_goes(server, tmp_path):
    root, base = server
    data, sha = _made_up(root, "pca.npz", 70_000)
    pins = f"assets.ASSETS['pca'] = ('vggish_pca_params.npz', '{base}/pca.npz', '{sha}'); "
    proc = _setup(tmp_path, pins, "--edge")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models" / "vggish_pca_params.npz").read_bytes() == data
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1 and "vggish_int8.tflite needs TensorFlow" in lines[0], lines
    again = _setup(tmp_path, pins.replace(base, "http://127.0.0.1:9"), "--edge")  # verified: no download
    assert again.returncode == 0 and "needs TensorFlow" in again.stdout
    bad = _setup(tmp_path / "b", pins.replace(sha, "0" * 64), "--edge")  # a mismatch fails setup's step
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "refused" in bad.stderr
    assert not (tmp_path / "b" / "models" / "vggish_pca_params.npz").exists()
