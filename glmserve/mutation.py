"""Mutation testing of the serving path: do the tests fail when the server is wrong?

    python -m glmserve.mutation [--mutants tests/mutants.toml] [--only ID ...]
                                [--scratch DIR] [--report FILE] [--list]

Each mutant in the list (TOML, ``[[mutant]]`` tables: ``id``, ``file``, ``find``,
``replace``, ``why``, optional ``count`` = how many times ``find`` occurs, default 1, and
``tests`` = the test files or node ids most likely to kill it) is a realistic bug. For
each one the tool

1. brings a scratch copy of the working tree up to date (``--scratch``, by default under
   /tmp; files are copied only when they changed, so the C++ build there is incremental),
2. replaces ``find`` by ``replace`` in ``file`` there (a mutant whose text is no longer in
   the file is reported STALE, one found a different number of times AMBIGUOUS: the list
   must be re-pointed, nothing is skipped silently),
3. rebuilds (``scripts/build.sh``, ``JOBS`` from the environment; CUDA off unless
   ``GLM_CMAKE_ARGS`` says otherwise),
4. runs the mutant's ``tests`` first with ``-x``, then, if they all pass, the rest of the
   CPU suite with ``-x``. The mutant is KILLED as soon as a test fails, SURVIVED if all pass,
5. restores the file.

It prints a table, writes it as markdown (``--report``) and exits 1 unless every mutant
was killed. ``make mutation-test`` runs it (not part of CI: it takes a while).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import filecmp
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MUTANTS = ROOT / "tests" / "mutants.toml"
REQUIRED = ("id", "file", "find", "replace", "why")


class MutantListError(ValueError):
    """The mutant list is malformed (a missing field, a duplicate id, ...)."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    why: str
    count: int = 1
    tests: tuple[str, ...] = ()


class Status(enum.Enum):
    KILLED = "killed"
    SURVIVED = "SURVIVED"
    STALE = "STALE"  # the text to find is no longer in the file
    AMBIGUOUS = "AMBIGUOUS"  # found, but not the expected number of times
    BUILD_FAILED = "BUILD FAILED"
    ERROR = "ERROR"


@dataclasses.dataclass
class Result:
    mutant: Mutant
    status: Status
    detail: str = ""
    seconds: float = 0.0


def load_mutants(path: Path) -> list[Mutant]:
    """The mutants of a TOML list; MutantListError names what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise MutantListError(f"{path}: not valid TOML: {e}") from None
    entries = data.get("mutant")
    if not isinstance(entries, list) or not entries:
        raise MutantListError(f"{path}: no [[mutant]] entries")
    out: list[Mutant] = []
    seen: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: mutant #{i + 1} ({e.get('id', '?')})"
        missing = [k for k in REQUIRED if not isinstance(e.get(k), str) or not e[k]]
        if "replace" in missing and isinstance(e.get("replace"), str):
            missing.remove("replace")  # an empty replacement (deletion) is fine
        if missing:
            raise MutantListError(f"{where}: missing or empty {', '.join(missing)}")
        unknown = set(e) - set(REQUIRED) - {"count", "tests"}
        if unknown:
            raise MutantListError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if e["id"] in seen:
            raise MutantListError(f"{where}: duplicate id")
        seen.add(e["id"])
        count = e.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise MutantListError(f"{where}: count must be an integer >= 1")
        tests = e.get("tests", [])
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise MutantListError(f"{where}: tests must be a list of strings")
        if e["find"] == e["replace"]:
            raise MutantListError(f"{where}: replace equals find (not a mutant)")
        out.append(
            Mutant(e["id"], e["file"], e["find"], e["replace"], e["why"], count, tuple(tests))
        )
    return out


def check_applicable(mutant: Mutant, root: Path) -> tuple[Status | None, str]:
    """(None, "") when ``mutant`` applies to the tree at ``root``; else STALE/AMBIGUOUS and why."""
    path = root / mutant.file
    if not path.is_file():
        return Status.STALE, f"{mutant.file} does not exist"
    n = path.read_text(encoding="utf-8").count(mutant.find)
    if n == 0:
        return Status.STALE, f"its text is no longer in {mutant.file}: re-point it"
    if n != mutant.count:
        return (
            Status.AMBIGUOUS,
            f"its text occurs {n} times in {mutant.file}, the list says {mutant.count}",
        )
    return None, ""


def apply_mutant(mutant: Mutant, root: Path) -> str:
    """Mutates the file under ``root``; returns its original text (for restore_mutant)."""
    status, why = check_applicable(mutant, root)
    if status is not None:
        raise MutantListError(f"mutant {mutant.id}: {why}")
    path = root / mutant.file
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace(mutant.find, mutant.replace), encoding="utf-8")
    return original


def restore_mutant(mutant: Mutant, root: Path, original: str) -> None:
    (root / mutant.file).write_text(original, encoding="utf-8")


# ------------------------------------------------------------------ the scratch copy


def tree_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the working tree at ``root``."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    return sorted({p for p in out.decode().split("\0") if p and (root / p).is_file()})


def sync_tree(src: Path, dst: Path, extra: Sequence[str] = ()) -> int:
    """Copies the working tree (and the ``extra`` paths, e.g. the demo model) from src to
    dst, only the files whose content differs, so that unchanged files keep their times
    and the build in dst stays incremental. Returns the number of files copied."""
    copied = 0
    files = tree_files(src)
    for rel in extra:
        p = src / rel
        if p.is_dir():
            files += [str(f.relative_to(src)) for f in p.rglob("*") if f.is_file()]
        elif p.is_file():
            files.append(rel)
    for rel in files:
        s, d = src / rel, dst / rel
        if d.is_file() and filecmp.cmp(s, d, shallow=False):
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)
        copied += 1
    return copied


def overlay_venv(src_venv: Path, root: Path) -> Path:
    """A thin venv at root/.venv: the same interpreter, the source venv's packages (numpy,
    torch, tritonclient, pytriton, ...) on its path after ``root`` itself, so that
    ``glmserve``, ``client`` and everything the server's Python models import come from the
    scratch copy (an editable install in the source venv would point at the source tree).
    Console scripts the tests call are small wrappers (ours) or links (the source venv's,
    e.g. ``locust``, which the load tests start from ``$VENV/bin``)."""
    dst = root / ".venv"
    py = dst / "bin" / "python"
    src_site = Path(
        subprocess.run(
            [str(src_venv / "bin" / "python"), "-c",
             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    if not py.exists():
        base = os.path.realpath(src_venv / "bin" / "python")
        subprocess.run([base, "-m", "venv", "--without-pip", str(dst)], check=True)
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    site.mkdir(parents=True, exist_ok=True)
    (site / "_glm_mutation.pth").write_text(f"{root}\n{src_site}\n", encoding="utf-8")
    for name in ("pytriton", "nvidia_pytriton.libs"):  # tests/helpers/tritonserver.py looks here
        link = site / name
        if not link.exists() and (src_site / name).exists():
            link.symlink_to(src_site / name)
    scripts = {
        "chatglm-generate": "from glmserve.cli import main",
        "chatglm-client": "from client.cli import main",
    }
    for name, imp in scripts.items():
        f = dst / "bin" / name
        f.write_text(f"#!{py}\nimport sys\n{imp}\nsys.exit(main())\n", encoding="utf-8")
        f.chmod(0o755)
    for name in ("locust", "ruff"):
        link = dst / "bin" / name
        if not link.exists() and (src_venv / "bin" / name).exists():
            link.symlink_to(src_venv / "bin" / name)
    return dst


def prepare_scratch(src: Path, scratch: Path, log: Callable[[str], None]) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    n = sync_tree(src, scratch, extra=["models/chatglm-tiny"])
    log(f"scratch {scratch}: {n} file(s) updated from {src}")
    # A git index of the copy's files: some tests ask git what the repository tracks.
    if not (scratch / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
    exclude = scratch / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text("/mutation-logs/\n/.venv/\n", encoding="utf-8")
    subprocess.run(["git", "add", "-A"], cwd=scratch, check=True, capture_output=True)
    overlay_venv(Path(os.environ.get("VENV") or src / ".venv").resolve(), scratch)


# ------------------------------------------------------------------ running


def scratch_env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VENV"] = str(scratch / ".venv")
    env["BUILD"] = str(scratch / "build")
    env["PATH"] = f"{scratch / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env.setdefault("GLM_CMAKE_ARGS", "-DGLM_WITH_CUDA=OFF")
    env.setdefault("JOBS", "1")
    env.pop("PYTHONPATH", None)
    return env


def build(scratch: Path, log_file: Path) -> bool:
    with log_file.open("ab") as f:
        r = subprocess.run(["bash", "scripts/build.sh"], cwd=scratch, env=scratch_env(scratch),
                           stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    return r.returncode == 0


_FAILED_RE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def run_pytest(scratch: Path, args: Sequence[str], log_file: Path) -> tuple[int, str]:
    """(pytest exit code, the first failing test's node id or "")."""
    cmd = [str(scratch / ".venv" / "bin" / "python"), "-m", "pytest", "-x", "-q", "-rfE",
           "-p", "no:randomly", "-p", "no:cacheprovider", "-m", "not gpu", *args]  # fmt: skip
    r = subprocess.run(cmd, cwd=scratch, env=scratch_env(scratch), capture_output=True, text=True)
    with log_file.open("a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n{r.stdout}{r.stderr}\n")
    m = _FAILED_RE.search(r.stdout)
    return r.returncode, m.group(1) if m else ""


def suite_rest(scratch: Path, first: Sequence[str]) -> list[str]:
    """The CPU suite without the files already run first."""
    done = {t.split("::", 1)[0] for t in first}
    return [
        str(p.relative_to(scratch))
        for p in sorted((scratch / "tests").rglob("test_*.py"))
        if str(p.relative_to(scratch)) not in done
    ]


def baseline(scratch: Path, mutants: Sequence[Mutant], log: Path) -> tuple[bool, str]:
    """Builds the unmutated copy and runs every mutant's first tests on it: they must pass,
    or a 'killed' verdict would mean nothing."""
    log.write_text("baseline: the unmutated tree\n", encoding="utf-8")
    if not build(scratch, log):
        return False, f"the build fails (see {log})"
    first = sorted({t for m in mutants for t in m.tests})
    if first:
        code, failed = run_pytest(scratch, first, log)
        if code != 0:
            return False, f"{failed or f'pytest exit {code}'} (see {log})"
    return True, ""


Tester = Callable[[Mutant], tuple[Status, str]]


def pytest_tester(scratch: Path, log_dir: Path) -> Tester:
    """Builds the mutated scratch tree and runs its tests (first the mutant's own list)."""

    def test(m: Mutant) -> tuple[Status, str]:
        log = log_dir / f"{m.id}.log"
        log.write_text(f"mutant {m.id}: {m.why}\n", encoding="utf-8")
        if not build(scratch, log):
            return Status.BUILD_FAILED, f"see {log}"
        stages = [list(m.tests)] if m.tests else []
        stages.append(suite_rest(scratch, m.tests))
        for stage in stages:
            code, failed = run_pytest(scratch, stage, log)
            if code in (1, 2):  # tests failed / interrupted (collection error)
                return Status.KILLED, failed or f"pytest exit {code} (see {log})"
            if code not in (0, 5):
                return Status.ERROR, f"pytest exit {code} (see {log})"
        return Status.SURVIVED, f"every test passed (see {log})"

    return test


def run_mutants(
    mutants: Sequence[Mutant], scratch: Path, tester: Tester, log: Callable[[str], None] = print
) -> list[Result]:
    results: list[Result] = []
    for m in mutants:
        t0 = time.monotonic()
        status, why = check_applicable(m, scratch)
        if status is not None:
            results.append(Result(m, status, why))
            log(f"{m.id}: {status.value}: {why}")
            continue
        original = apply_mutant(m, scratch)
        try:
            status, why = tester(m)
        except Exception as e:  # noqa: BLE001 - reported as this mutant's error
            status, why = Status.ERROR, f"{type(e).__name__}: {e}"
        finally:
            restore_mutant(m, scratch, original)
        results.append(Result(m, status, why, time.monotonic() - t0))
        log(f"{m.id}: {status.value} in {results[-1].seconds:.0f}s ({why})")
    return results


# ------------------------------------------------------------------ report


def report_markdown(results: Sequence[Result], total_seconds: float) -> str:
    killed = sum(r.status is Status.KILLED for r in results)
    lines = [
        "# Mutation report",
        "",
        f"{killed} of {len(results)} mutants killed in {total_seconds:.0f} s.",
        "",
        "| mutant | file | status | killed by / detail | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        detail = r.detail.replace("|", "\\|")
        lines.append(
            f"| {r.mutant.id} | {r.mutant.file} | {r.status.value} | {detail} | {r.seconds:.0f} |"
        )
    lines += ["", "## Mutants", ""]
    lines += [f"- **{r.mutant.id}** ({r.mutant.file}): {r.mutant.why}" for r in results]
    return "\n".join(lines) + "\n"


def report_table(results: Sequence[Result]) -> str:
    rows = [("mutant", "status", "seconds", "killed by / detail")]
    rows += [(r.mutant.id, r.status.value, f"{r.seconds:.0f}", r.detail) for r in results]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows)


def exit_code(results: Sequence[Result]) -> int:
    """0 when every mutant was killed, else 1."""
    return 0 if results and all(r.status is Status.KILLED for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m glmserve.mutation", description=__doc__.split("\n")[0]
    )
    p.add_argument("--mutants", type=Path, default=DEFAULT_MUTANTS, help="the mutant list (TOML)")
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    p.add_argument("--source", type=Path, default=ROOT, help="the working tree to mutate a copy of")
    p.add_argument("--scratch", type=Path, default=None,
                   help="scratch copy (default /tmp/glmserve-mutation/<source dir name>)")  # fmt: skip
    p.add_argument("--report", type=Path, default=None,
                   help="markdown report (default <source>/build/mutation-report.md)")  # fmt: skip
    p.add_argument("--list", action="store_true", help="check the list against the tree and exit")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip building and running the mutants' tests on the unmutated copy first")  # fmt: skip
    args = p.parse_args(argv)
    try:
        mutants = load_mutants(args.mutants)
    except (MutantListError, OSError) as e:
        print(f"mutation: {e}", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            print(f"mutation: unknown mutant id(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in args.only]
    source = args.source.resolve()
    if args.list:
        bad = 0
        for m in mutants:
            status, why = check_applicable(m, source)
            bad += status is not None
            print(f"{m.id:<34} {m.file:<48} {status.value + ': ' + why if status else 'applies'}")
        return 1 if bad else 0
    scratch = (args.scratch or Path("/tmp/glmserve-mutation") / source.name).resolve()
    report = args.report or source / "build" / "mutation-report.md"
    t0 = time.monotonic()
    prepare_scratch(source, scratch, print)
    logs = scratch / "mutation-logs"
    logs.mkdir(exist_ok=True)
    if not args.no_baseline:
        ok, why = baseline(scratch, mutants, logs / "baseline.log")
        if not ok:
            print(f"mutation: the unmutated tree fails: {why}; fix that first", file=sys.stderr)
            return 2
    results = run_mutants(mutants, scratch, pytest_tester(scratch, logs))
    total = time.monotonic() - t0
    print()
    print(report_table(results))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(report_markdown(results, total), encoding="utf-8")
    killed = sum(r.status is Status.KILLED for r in results)
    print(f"\n{killed} of {len(results)} mutants killed in {total:.0f} s; report: {report}")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
