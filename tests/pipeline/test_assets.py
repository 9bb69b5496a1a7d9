"""The asset downloader: offline it fails at once, naming the URL and the fix."""

import subprocess
import sys
import time

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
