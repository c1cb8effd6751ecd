"""Print the packages whose newest allowed version differs from the lock, for this machine.

Usage: moved_packages.py LOCKED.txt LATEST.txt (both as `uv export` / `uv pip compile` write them).
"""

import re
import sys

from packaging.markers import Marker

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(path: str) -> dict[str, str]:
    found = {}
    for line in open(path, encoding="utf-8"):
        m = PIN.match(line.strip())
        if m and (m[3] is None or Marker(m[3]).evaluate()):
            found[m[1].lower()] = m[2]
    return found


locked, latest = pins(sys.argv[1]), pins(sys.argv[2])
moved = sorted(n for n in locked.keys() | latest.keys() if locked.get(n) != latest.get(n))
for name in moved:
    print(f"  {name}: {locked.get(name, '-')} -> {latest.get(name, '-')}")
print(f"{len(moved)} of {len(latest)} packages moved since the lock" if moved else "nothing moved")
