"""Every module a doc names exists: README.md and docs/*.md are read by newcomers, who trust a path they see.

Checked: paths with a slash (`billing/ledger.py`, `gateway/static/admin/`), dotted names under a product
package (`billing.reports.text_cell`: the module, then the name inside it), and bare file names (`ferry.py`:
some file of the repository has that name)."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "billing", "backends", "classifier", "bench", "tests")
CODE = re.compile(r"`([^`\s]+)`")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def slash_path_missing(ref: str, files: list[str]) -> bool:
    ref = ref.split("::")[0].split(":")[0].rstrip("/")
    return not any(f == ref or f.startswith(ref + "/") or f.endswith("/" + ref) for f in files)


def dotted_missing(ref: str) -> bool:
    """`pkg.mod.name`: the longest prefix that is a module, and each name after it defined there."""
    parts = ref.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            text = module.read_text()
            return any(not re.search(rf"\b{re.escape(name)}\b", text) for name in parts[cut:cut + 1])
    return True


def problems(text: str, files: list[str]) -> list[str]:
    names = {Path(f).name for f in files}
    out = []
    for ref in dict.fromkeys(CODE.findall(text)):
        ref = ref.rstrip(".,;)")
        if "/" in ref and ref.split("/")[0] in PACKAGES and (ref.endswith(".py") or ref.endswith("/")):
            out += [ref] if slash_path_missing(ref, files) else []
        elif re.fullmatch(r"[a-z_]+(\.[A-Za-z_]+)+", ref) and ref.split(".")[0] in PACKAGES:
            out += [ref] if dotted_missing(ref) else []
        elif re.fullmatch(r"[a-z_]+\.py", ref):
            out += [ref] if ref not in names else []
    return out


def test_the_check_catches_a_stale_name():
    files = tracked()
    doc = "`billing/ledger.py`, `billing.ledger`, `ferry.py`, `billing/service_old.py`, `billing.gone`, `nowhere.py`"
    assert problems(doc, files) == ["billing/service_old.py", "billing.gone", "nowhere.py"]


def test_docs_name_only_modules_that_exist():
    files = tracked()
    stale = {doc.name: found for doc in DOCS if (found := problems(doc.read_text(), files))}
    assert stale == {}, f"docs name modules that do not exist: {stale}"
