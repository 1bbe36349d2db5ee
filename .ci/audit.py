"""Audit the pinned set (constraints.txt) for known vulnerabilities; fail on any not excepted.

pip-audit asks the package index for each pinned version's record. Where the index does not
serve that record (this workplace's mirror answers 404 for it), pip-audit skips the package
and still exits 0; this script then reads the package's own record, whose vulnerability list
is its latest release's, so a pin that is the latest release is still audited. Pins that
neither could audit are listed by name, never passed over in silence.

Exceptions live in .ci/audit-exceptions.txt: one ``ID reason`` a line.

Usage: python3 .ci/audit.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pip._internal.models.index import PyPI  # the index's address, not written down here

REPO = Path(__file__).resolve().parents[1]
EXCEPTIONS = REPO / ".ci" / "audit-exceptions.txt"


def pinned() -> dict[str, str]:
    """constraints.txt as {canonical name: version} (pip-audit's report names skipped pins only)."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if version:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def excepted() -> set[str]:
    lines = EXCEPTIONS.read_text(encoding="utf-8").splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def pip_audit(ignored: set[str]) -> dict[str, list[dict[str, object]]]:
    """pip-audit's report on constraints.txt: {"dependencies": [...]} ."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "-r", str(REPO / "constraints.txt"),
                   "--no-deps", "--disable-pip", "--progress-spinner", "off", "--desc", "off",
                   "-f", "json", "-o", str(report)]
        for vulnerability in sorted(ignored):
            command += ["--ignore-vuln", vulnerability]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if not report.exists():
            sys.exit(f"pip-audit failed ({done.returncode}): {done.stderr.strip()}")
        result: dict[str, list[dict[str, object]]] = json.loads(report.read_text())
        return result


def latest_release_record(name: str) -> tuple[str, list[dict[str, object]]] | None:
    """The package's latest version and that version's vulnerabilities; None if unreachable."""
    try:
        with urllib.request.urlopen(f"{PyPI.pypi_url}/{name}/json", timeout=60) as response:
            record = json.load(response)
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None
    return record["info"]["version"], record.get("vulnerabilities") or []


def main() -> int:
    ignored = excepted()
    dependencies = pip_audit(ignored)["dependencies"]
    found = [(str(d["name"]), str(d["version"]), v) for d in dependencies
             for v in d.get("vulns", [])]
    pins = pinned()
    skipped = [(str(d["name"]), pins[str(d["name"])]) for d in dependencies if d.get("skip_reason")]
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(latest_release_record, [name for name, _ in skipped]))
    unaudited = []
    for (name, version), record in zip(skipped, records, strict=True):
        if record is None or record[0] != version:
            latest = "unreachable" if record is None else f"latest {record[0]}"
            unaudited.append(f"{name}=={version} ({latest})")
            continue
        for vulnerability in record[1]:
            ids = {str(vulnerability["id"]), *(vulnerability.get("aliases") or [])}
            if not vulnerability.get("withdrawn") and not ids & ignored:
                found.append((name, version, vulnerability))
    for name, version, vulnerability in found:
        fixes = ", ".join(vulnerability.get("fix_versions") or vulnerability.get("fixed_in") or [])
        print(f"VULNERABLE {name}=={version}: {vulnerability['id']} (fixed in: {fixes or 'none'})")
    print(f"audit: {len(dependencies)} pins; {len(dependencies) - len(skipped)} audited by "
          f"pip-audit, {len(skipped) - len(unaudited)} by their latest-release record; "
          f"{len(found)} vulnerable; {len(ignored)} excepted in {EXCEPTIONS.relative_to(REPO)}")
    if unaudited:
        print(f"audit: {len(unaudited)} pins could not be audited here (the index serves no "
              f"record of an older version): {', '.join(unaudited)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
