"""glmserve.mutation on its own: the mutant list, applying and restoring a mutant, stale
and ambiguous mutants reported (never skipped silently), the verdicts and the report.
No build and no server: the tester is a stand-in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from glmserve import mutation
from glmserve.mutation import Mutant, MutantListError, Status

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


TOML = """
[[mutant]]
id = "off-by-one"
file = "src/a.cc"
find = "i < n"
replace = "i <= n"
why = "a classic"
tests = ["tests/test_a.py"]

[[mutant]]
id = "drop-line"
file = "src/a.cc"
find = "  free(p);\\n"
replace = ""
count = 2
why = "a leak"
"""

SOURCE = "for (int i = 0; i < n; ++i) {\n  free(p);\n}\n  free(p);\n"


def test_load_mutants_reads_fields_and_defaults(tmp_path):
    ms = mutation.load_mutants(write(tmp_path / "m.toml", TOML))
    assert [m.id for m in ms] == ["off-by-one", "drop-line"]
    assert ms[0].count == 1 and ms[0].tests == ("tests/test_a.py",)
    assert ms[1].replace == "" and ms[1].count == 2 and ms[1].tests == ()


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('[[mutant]]\nid = "x"\nfile = "f"\nfind = "a"\nreplace = "b"\n', "missing or empty why"),
        (
            TOML
            + '\n[[mutant]]\nid = "drop-line"\nfile = "f"\nfind = "a"\nreplace = "b"\nwhy = "w"\n',
            "duplicate id",
        ),  # fmt: skip
        (
            '[[mutant]]\nid = "x"\nfile = "f"\nfind = "a"\nreplace = "a"\nwhy = "w"\n',
            "not a mutant",
        ),
        (
            '[[mutant]]\nid = "x"\nfile = "f"\nfind = "a"\nreplace = "b"\nwhy = "w"\ncount = 0\n',
            "count",
        ),  # fmt: skip
        (
            '[[mutant]]\nid = "x"\nfile = "f"\nfind = "a"\nreplace = "b"\nwhy = "w"\nfnid = 1\n',
            "unknown field",
        ),  # fmt: skip
        ("title = 'no mutants'\n", "no [[mutant]]"),
        ("[[mutant\n", "not valid TOML"),
    ],
)
def test_malformed_lists_are_refused_with_the_reason(tmp_path, bad, needle):
    with pytest.raises(MutantListError, match=needle.replace("[", r"\[")):
        mutation.load_mutants(write(tmp_path / "m.toml", bad))


def test_apply_and_restore(tmp_path):
    src = write(tmp_path / "src" / "a.cc", SOURCE)
    m1, m2 = mutation.load_mutants(write(tmp_path / "m.toml", TOML))
    original = mutation.apply_mutant(m1, tmp_path)
    assert src.read_text() == SOURCE.replace("i < n", "i <= n")
    mutation.restore_mutant(m1, tmp_path, original)
    assert src.read_text() == SOURCE
    mutation.apply_mutant(m2, tmp_path)  # count = 2: both occurrences go
    assert "free" not in src.read_text()


def test_stale_and_ambiguous_mutants_are_reported(tmp_path):
    write(tmp_path / "src" / "a.cc", SOURCE.replace("i < n", "i < count"))
    stale = Mutant("off-by-one", "src/a.cc", "i < n", "i <= n", "w")
    status, why = mutation.check_applicable(stale, tmp_path)
    assert status is Status.STALE and "no longer in src/a.cc" in why and "re-point" in why
    with pytest.raises(MutantListError, match="off-by-one.*no longer in src/a.cc"):
        mutation.apply_mutant(stale, tmp_path)
    gone = Mutant("moved", "src/b.cc", "x", "y", "w")
    assert mutation.check_applicable(gone, tmp_path) == (Status.STALE, "src/b.cc does not exist")
    once = Mutant("once", "src/a.cc", "  free(p);\n", "", "w")  # occurs twice
    status, why = mutation.check_applicable(once, tmp_path)
    assert status is Status.AMBIGUOUS and "2 times" in why and "says 1" in why


def test_run_mutants_verdicts_restore_and_exit_code(tmp_path):
    src = write(tmp_path / "src" / "a.cc", SOURCE)
    m1, m2 = mutation.load_mutants(write(tmp_path / "m.toml", TOML))
    stale = Mutant("stale", "src/a.cc", "no such text", "x", "w")
    seen: list[str] = []

    def tester(m: Mutant) -> tuple[Status, str]:
        seen.append(src.read_text())  # the tester sees the mutated file
        return (Status.KILLED, "tests/test_a.py::test_x") if m.id == "off-by-one" else (
            Status.SURVIVED, "every test passed")  # fmt: skip

    results = mutation.run_mutants([m1, stale, m2], tmp_path, tester, log=lambda _: None)
    assert [r.status for r in results] == [Status.KILLED, Status.STALE, Status.SURVIVED]
    assert seen == [SOURCE.replace("i < n", "i <= n"), SOURCE.replace("  free(p);\n", "")]
    assert src.read_text() == SOURCE  # restored after each mutant
    assert mutation.exit_code(results) == 1
    assert mutation.exit_code([results[0]]) == 0
    assert mutation.exit_code([results[1]]) == 1  # a stale mutant is not a pass
    md = mutation.report_markdown(results, 12.0)
    assert "1 of 3 mutants killed in 12 s" in md
    assert "| stale | src/a.cc | STALE |" in md and "| drop-line | src/a.cc | SURVIVED |" in md
    table = mutation.report_table(results)
    assert table.splitlines()[1].startswith("off-by-one") and "killed" in table


def test_a_tester_error_is_reported_and_the_file_restored(tmp_path):
    src = write(tmp_path / "src" / "a.cc", SOURCE)
    m1 = mutation.load_mutants(write(tmp_path / "m.toml", TOML))[0]

    def broken(m: Mutant) -> tuple[Status, str]:
        raise RuntimeError("build exploded")

    (r,) = mutation.run_mutants([m1], tmp_path, broken, log=lambda _: None)
    assert r.status is Status.ERROR and "build exploded" in r.detail
    assert src.read_text() == SOURCE


def test_sync_tree_copies_only_changed_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    write(src / "a.txt", "a")
    write(src / "b.txt", "b")
    write(src / "ignored.log", "x")
    write(src / ".gitignore", "*.log\n")
    assert mutation.sync_tree(src, dst) == 3  # a, b, .gitignore; not the ignored file
    assert not (dst / "ignored.log").exists()
    write(src / "b.txt", "b2")
    assert mutation.sync_tree(src, dst) == 1 and (dst / "b.txt").read_text() == "b2"


def test_cli_list_reports_stale_mutants(tmp_path, capsys):
    write(tmp_path / "src" / "a.cc", SOURCE.replace("i < n", "i < count"))
    m = write(tmp_path / "m.toml", TOML)
    code = mutation.main(["--mutants", str(m), "--source", str(tmp_path), "--list"])
    out = capsys.readouterr().out
    assert code == 1
    assert "off-by-one" in out and "STALE" in out and "drop-line" in out and "applies" in out
    assert mutation.main(["--mutants", str(m), "--only", "nope", "--list"]) == 2


def test_the_repository_list_applies_to_this_tree():
    """Every mutant of tests/mutants.toml applies to the current sources (a STALE one must be
    re-pointed when its file changes, e.g. after backend_src/triton/instance.cc is split),
    names existing test files, and together they cover (a)-(e) of the issue plus the
    scheduler, the block manager, sampling and postprocessing."""
    mutants = mutation.load_mutants(mutation.DEFAULT_MUTANTS)
    for m in mutants:
        assert mutation.check_applicable(m, ROOT) == (None, ""), m.id
        for t in m.tests:
            assert (ROOT / t.split("::", 1)[0]).is_file(), (m.id, t)
    files = {m.file for m in mutants}
    for need in (
        "backend_src/triton/instance.cc",
        "model_repository/preprocessing/1/model.py",
        "model_repository/postprocessing/1/model.py",
        "backend_src/engine/scheduler.cc",
        "backend_src/engine/block_manager.cc",
        "backend_src/engine/sampling.cc",
    ):
        assert need in files, need
