"""glmserve.cuda_diag: its helpers, and the whole run with a CPU engine in place of CUDA."""

from __future__ import annotations

import numpy as np
from helpers.engine_util import engine_module, tiny_dir

from glmserve import cuda_diag as cd


def test_random_prompt_ends_with_gmask_sop():
    p = cd.random_prompt(np.random.default_rng(1), 7)
    assert len(p) == 7 and p[-2:] == [681, 684]
    assert all(5 <= x < 680 for x in p[:-2])


def test_agreement_counts_leading_equal_ids():
    assert cd.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]]) == [2, 3]


def test_row_errors():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    got = np.array([[3.0, 4.0], [1.0, 1.0]])
    assert np.allclose(cd.row_errors(ref, got), [0.0, 1.0])


def test_dry_run_on_cpu(capsys):
    engine_module()
    model = tiny_dir()
    assert cd.main(["--model", str(model), "--small", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # a CPU engine against the CPU engine: every id agrees, logits equal
    assert out.count("agreement with cpu per prompt: [12, 12]") == 3, out
    assert "debug rows max err 0.0" in out
