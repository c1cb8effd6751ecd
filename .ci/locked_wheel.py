"""Build a wheel for a package the lock pins only as an sdist (llama-cpp-python), once a machine.

uv keeps wheels it builds, but takes a new copy of an sdist whenever its HTTP cache goes stale and
builds it again: 4-8 minutes of llama.cpp on 2 cores for every fresh clone. So the Makefile builds
the wheel here, from the sdist uv.lock pins (its hash checked), into a folder every clone shares.

Usage: locked_wheel.py NAME WHEELS_DIR UV  -> prints the wheel's path
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path

name, wheels, uv = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
locked = next(p for p in tomllib.loads(Path("uv.lock").read_text())["package"] if p["name"] == name)
stem = f"{name.replace('-', '_')}-{locked['version']}-"
if built := sorted(wheels.glob(f"{stem}*.whl")):
    print(built[-1])
    sys.exit(0)

sdist = locked["sdist"]
print(f"Building {name} {locked['version']} once (minutes); the wheel is kept in {wheels}", file=sys.stderr)
with tempfile.TemporaryDirectory() as tmp:
    archive = Path(tmp) / sdist["url"].rsplit("/", 1)[1]
    with urllib.request.urlopen(sdist["url"]) as r, archive.open("wb") as f:
        shutil.copyfileobj(r, f)
    digest = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != sdist["hash"]:
        sys.exit(f"{archive.name}: hash {digest} is not the one uv.lock pins ({sdist['hash']})")
    out = Path(tmp) / "dist"
    subprocess.run([uv, "build", "--wheel", "--out-dir", str(out), str(archive)], check=True)
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(out.glob("*.whl"))
    shutil.move(wheel, wheels / wheel.name)
    print(wheels / wheel.name)
