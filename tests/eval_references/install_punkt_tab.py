"""Install NLTK's `punkt_tab` data (IFEval's reference checker splits sentences and words with it) into the active
environment (`sys.prefix/nltk_data`, on NLTK's search path), for CI and machines without GitHub access.

    python tests/eval_references/install_punkt_tab.py

First `nltk.download("punkt_tab")` (NLTK's own route, from GitHub). Where that is blocked: the same `punkt_tab.zip`
(NLTK data, MIT licence) as shipped inside the PyPI wheel of `llama-index-core` 0.14.25
(`llama_index/core/_static/nltk_cache/tokenizers/punkt_tab.zip`), fetched with `pip download --no-deps` and checked
against the SHA-256 of NLTK's published archive (4,319,076 bytes) before it is unpacked. Nothing of llama-index is
installed.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


WHEEL = "llama-index-core==0.14.25"
MEMBER = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab.zip"
SHA256 = "e57f64187974277726a3417ca6f181ec5403676c717672eef6a748a7b20e0106"


def installed() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


def main() -> int:
    import nltk

    if installed():
        print("punkt_tab: already installed")
        return 0
    target = Path(sys.prefix) / "nltk_data"
    if nltk.download("punkt_tab", download_dir=str(target), quiet=True) and installed():
        print(f"punkt_tab: downloaded by nltk into {target}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", folder], check=True
        )
        (wheel,) = Path(folder).glob("*.whl")
        data = zipfile.ZipFile(wheel).read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        print(f"punkt_tab: {WHEEL} carries an archive that is not NLTK's (SHA-256 mismatch)", file=sys.stderr)
        return 1
    (target / "tokenizers").mkdir(parents=True, exist_ok=True)
    archive = target / "tokenizers" / "punkt_tab.zip"
    archive.write_bytes(data)
    zipfile.ZipFile(archive).extractall(target / "tokenizers")
    if not installed():
        print(f"punkt_tab: unpacked into {target} but NLTK does not find it", file=sys.stderr)
        return 1
    print(f"punkt_tab: installed into {target} from {WHEEL} (SHA-256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
