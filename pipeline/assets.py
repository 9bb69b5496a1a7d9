"""Downloads the VGGish release files a user's machine needs (never bundled).

    python -m pipeline.assets pca      [--out PATH]   # vggish_pca_params.npz (~70 kB)
    python -m pipeline.assets vggish   [--out PATH]   # vggish_model.ckpt (~277 MB)

Both go to ``default_dir()`` unless ``--out`` says otherwise. On a machine
without network the command fails at once with what to do instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from pipeline import params

ASSETS = {
    "pca": ("vggish_pca_params.npz", params.PCA_PARAMS_URL, params.PCA_PARAMS_SHA256),
    "vggish": ("vggish_model.ckpt", params.VGGISH_CHECKPOINT_URL, None),
}
_TIMEOUT_S = 15.0


class AssetError(RuntimeError):
    """A download failed; the message says why and what to do."""


def default_dir() -> Path:
    """Where assets live: ``$AUDIOCAP_DATA_DIR``, else ``/var/lib/audiocap`` when
    it is writable (the service's StateDirectory), else ``~/.cache/audiocap``."""
    env = os.environ.get("AUDIOCAP_DATA_DIR")
    if env:
        return Path(env)
    service_dir = Path("/var/lib/audiocap")
    if service_dir.is_dir() and os.access(service_dir, os.W_OK):
        return service_dir
    return Path.home() / ".cache" / "audiocap"


def default_path(asset: str) -> Path:
    """The default location of ``asset`` (``pca`` or ``vggish``)."""
    return default_dir() / ASSETS[asset][0]


def download(asset: str, out: Path | None = None) -> Path:
    """Downloads ``asset`` to ``out`` (atomically; the sha256 is checked where known).

    Raises:
      AssetError: no network, HTTP error or checksum mismatch, with the fix.
    """
    filename, url, sha256 = ASSETS[asset]
    dest = Path(out) if out else default_path(asset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                tmp.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        os.unlink(tmp_name)
        reason = getattr(exc, "reason", exc)
        raise AssetError(
            f"could not download {filename} from {url} ({reason}). If this machine has no "
            f"network access, download that URL on one that does and copy the file to {dest}"
        ) from None
    if sha256 and digest.hexdigest() != sha256:
        os.unlink(tmp_name)
        raise AssetError(
            f"{url} gave a file with sha256 {digest.hexdigest()}, expected {sha256}; not saved"
        )
    os.replace(tmp_name, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.assets", description="Download the VGGish release files."
    )
    parser.add_argument("asset", choices=sorted(ASSETS), help="pca: PCA parameters; vggish: TF1 checkpoint")
    parser.add_argument("--out", type=Path, help=f"destination file (default: under {default_dir()})")
    args = parser.parse_args(argv)
    try:
        path = download(args.asset, args.out)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
