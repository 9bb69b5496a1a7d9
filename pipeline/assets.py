"""Downloads the VGGish release files a user's machine needs (never bundled),
checks them against their pinned sha256 and size, and builds the edge file.

    python -m pipeline.assets setup [--edge]   # what scripts/setup runs: everything, or say what to fetch
    python -m pipeline.assets pca      [--out PATH]   # vggish_pca_params.npz (~70 kB)
    python -m pipeline.assets vggish   [--out PATH]   # vggish_model.ckpt (291,108,469 bytes)

Files go to ``default_dir()`` unless ``--out`` says otherwise. A download is
written to a temporary file beside its destination, checked, and only then
renamed into place: a wrong or cut-off file is refused with one line and
nothing half-written is kept. On a machine without network ``setup`` still
succeeds and prints one line naming the files and where to put them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from pipeline import params

ASSETS = {
    "pca": ("vggish_pca_params.npz", params.PCA_PARAMS_URL, params.PCA_PARAMS_SHA256),
    "vggish": ("vggish_model.ckpt", params.VGGISH_CHECKPOINT_URL, params.VGGISH_CHECKPOINT_SHA256),
}
"""asset -> (file name, URL, pinned sha256)."""
SIZES = {"vggish": params.VGGISH_CHECKPOINT_BYTES}
"""asset -> pinned size in bytes, where known (a longer download is cut off early)."""
EDGE_VGGISH = "vggish_int8.tflite"
"""The edge profile's VGGish, exported from the checkpoint by :func:`build_edge_file`."""
_TIMEOUT_S = 15.0


class AssetError(RuntimeError):
    """A download failed; the message says why and what to do."""


class AssetMismatch(AssetError):
    """The download is not the pinned file (wrong hash or size); nothing was kept."""


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download(asset: str, out: Path | None = None, *, url: str | None = None,
             sha256: str | None = None, size: int | None = None) -> Path:
    """Downloads ``asset`` to ``out`` (default :func:`default_path`), atomically.

    Args:
      url, sha256, size: override the pinned URL, hash and size (tests serve a
        file of their own on loopback).

    Raises:
      AssetMismatch: the bytes are not the pinned file; the partial file is removed.
      AssetError: no network or an HTTP error, with the fix.
    """
    filename, pinned_url, pinned_sha = ASSETS[asset]
    url, sha256 = url or pinned_url, sha256 or pinned_sha
    size = size if size is not None else SIZES.get(asset)
    dest = Path(out) if out else default_path(asset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.", suffix=".part")
    digest, got = hashlib.sha256(), 0
    try:
        try:
            with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
                while chunk := resp.read(1 << 20):
                    got += len(chunk)
                    if size is not None and got > size:
                        break  # longer than the release file: not it
                    digest.update(chunk)
                    tmp.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AssetError(
                f"could not download {filename} from {url} ({reason}). If this machine has no "
                f"network access, download that URL on one that does and copy the file to {dest}"
            ) from None
        if (size is not None and got != size) or (sha256 and digest.hexdigest() != sha256):
            what = f"more than {size:,} bytes" if size is not None and got > size else \
                f"{got:,} bytes with sha256 {digest.hexdigest()}"
            want = f"{size:,} bytes with sha256 {sha256}" if size is not None else f"sha256 {sha256}"
            raise AssetMismatch(f"refused {filename} from {url}: got {what}, expected {want}; nothing was saved")
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest


def verified(asset: str, path: Path) -> bool:
    """Whether ``path`` holds the pinned release file."""
    _, _, sha256 = ASSETS[asset]
    size = SIZES.get(asset)
    return path.is_file() and (size is None or path.stat().st_size == size) and sha256_of(path) == sha256


def build_edge_file(ckpt: Path, out: Path) -> Path:
    """Exports the checkpoint as the edge profile's int8 VGGish (needs TensorFlow)."""
    from pipeline.quiet import import_tensorflow

    import_tensorflow()
    from pipeline.vggish import export_tflite, load_vggish

    tmp = out.with_name(f".{out.name}.part")
    try:
        export_tflite(load_vggish(str(ckpt)), tmp, "int8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def setup(directory: Path | None = None, edge: bool = False) -> int:
    """Puts the model files in ``directory`` (default :func:`default_dir`): the
    PCA file, and on the full stack the checkpoint and the edge file built from
    it. Files already there and verified are kept. Prints one line; returns 1
    only when a download was refused (wrong bytes), 0 otherwise, offline too."""
    where = Path(directory) if directory else default_dir()
    wanted = ["pca"] if edge else ["pca", "vggish"]
    missing, done = [], []
    for asset in wanted:
        path = where / ASSETS[asset][0]
        if verified(asset, path):
            continue
        try:
            download(asset, path)
            done.append(path.name)
        except AssetMismatch as exc:
            print(f"audiocap model files: {exc}", file=sys.stderr)
            return 1
        except AssetError:
            missing.append(asset)
    edge_file = where / EDGE_VGGISH
    ckpt = where / ASSETS["vggish"][0]
    if not edge and not missing and not edge_file.is_file() and importlib.util.find_spec("tensorflow"):
        build_edge_file(ckpt, edge_file)
        done.append(edge_file.name)
    if missing:
        urls = " and ".join(ASSETS[a][1] for a in missing)
        then = "" if edge else f", then run `python -m pipeline.assets setup` again to build {EDGE_VGGISH}"
        print(f"audiocap model files: offline; download {urls} on a machine with network and copy "
              f"{' and '.join(ASSETS[a][0] for a in missing)} to {where}{then}")
    elif edge and not edge_file.is_file():
        print(f"audiocap model files: PCA in {where}; {EDGE_VGGISH} needs TensorFlow: run scripts/setup on a "
              f"bigger machine and copy its {EDGE_VGGISH} to {where}")
    else:
        print(f"audiocap model files in {where}: " + (f"fetched/built {', '.join(done)}" if done else "all present"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.assets", description="Download the VGGish release files."
    )
    parser.add_argument("asset", choices=sorted(ASSETS) + ["setup"],
                        help="pca: PCA parameters; vggish: TF1 checkpoint; setup: all, and the edge file")
    parser.add_argument("--out", type=Path, help=f"destination file, or directory for setup (default: {default_dir()})")
    parser.add_argument("--edge", action="store_true", help="setup for the edge profile (no TensorFlow)")
    args = parser.parse_args(argv)
    if args.asset == "setup":
        return setup(args.out, args.edge)
    try:
        path = download(args.asset, args.out)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
