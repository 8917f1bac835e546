"""Every benchmark script in `--quick` mode: it runs on its own tiny synthetic data, prints a table with
every row the script defines and only finite numbers, and writes nothing into benchmarks/."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import clinical, inference, learning, preprocess, results, stage1, training

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
NOT_FINITE = re.compile(r"\b(?:nan|inf|infinity)\b", re.I)


def data_rows(output: str) -> list[list[str]]:
    """The cells of every Markdown table row below a header separator (|---|---:|...)."""
    rows, header = [], None
    lines = [line.strip() for line in output.splitlines()]
    for previous, line in zip([""] + lines, lines):
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            header = len(previous.strip("|").split("|"))
            continue
        if header is not None:
            assert len(cells) == header, f"row with {len(cells)} cells under a header of {header}: {line}"
            rows.append(cells)
    return rows


def check_table(output: str, expected: list[tuple[str, ...]]) -> None:
    """The table's rows start with the expected labels, in order, and hold only finite numbers."""
    rows = data_rows(output)
    width = len(expected[0])
    assert [tuple(row[:width]) for row in rows] == expected, output
    for row in rows:
        values = " | ".join(row[width:])
        assert not NOT_FINITE.search(values), f"not finite: {row}"
        numbers = [float(n) for n in NUMBER.findall(values)]
        assert numbers and all(math.isfinite(n) for n in numbers), row
    assert "../shared" not in output, "a quick run must not read ../shared/data"


def benchmark_files() -> dict[str, tuple[int, int]]:
    """RESULTS.md and every figure, with their sizes and modification times."""
    paths = [results.RESULTS, *sorted(results.FIGURES.glob("*"))]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.exists()}


@pytest.fixture
def untouched_results(monkeypatch):
    """Runs the test in the repository root and checks that benchmarks/RESULTS.md (byte for byte) and
    benchmarks/figures are as they were, and that no benchmarks/_work appeared."""
    monkeypatch.chdir(REPO)
    before = results.RESULTS.read_bytes()
    files = benchmark_files()
    work_existed = (results.HERE / "_work").exists()
    yield
    assert results.RESULTS.read_bytes() == before
    assert benchmark_files() == files
    assert (results.HERE / "_work").exists() == work_existed


def run_quick(module, capsys, *extra: str) -> str:
    assert module.main(["--quick", *extra]) == 0
    return capsys.readouterr().out


def test_preprocess_quick(untouched_results, capsys):
    check_table(run_quick(preprocess, capsys), [(label,) for label in preprocess.METHODS])


def test_stage1_quick(untouched_results, capsys):
    output = run_quick(stage1, capsys)
    check_table(output, [stage1.row_label(case) for case in stage1.QUICK_CASES])
    assert "-minute run of configs/debug/stage1.yaml" in output and "validation L_center" in output


def test_inference_quick(untouched_results, capsys):
    output = run_quick(inference, capsys)
    check_table(output, [(label,) for label, *_ in inference.CASES + inference.REFERENCE_CASES])


def test_training_quick(untouched_results):
    """In its own process: it starts (and stops) a local Ray instance."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", DS_ACCELERATOR="cpu")
    done = subprocess.run([sys.executable, "benchmarks/training.py", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    expected = [(training.STAGES[stage], label) for stage, settings in training.plan(True) for label, *_ in settings]
    check_table(done.stdout, expected)


def test_quality_quick(untouched_results, capsys):
    from benchmarks import quality

    output = run_quick(quality, capsys)
    plan = quality.load_plan(quality.PLAN, quick=True)
    assert output.count("Command:") == 2, output  # the paper's table, then the beyond table
    paper, beyond = output.split("Command:")[1:]
    blocks = [block for block in paper.split("\n\n") if "|---" in block]
    assert len(blocks) == 3, output
    labels = quality.method_labels(plan)
    check_table(blocks[0], [(label,) for label in labels])  # every volume scored, the knee for its rows only
    check_table(blocks[1], [(label,) for label in labels if label != quality.LINEAR])
    fig9 = data_rows(blocks[2])
    assert [row[0] for row in fig9][:2] == ["with L_comp", "without L_comp (eta = 0)"]
    assert all(math.isfinite(float(cell)) for row in fig9[:2] for cell in row[1:])
    assert "Time per part" in paper and "stage I ablation (without L_comp, eta 0)" in paper
    check_beyond(quality, plan, beyond)
    assert "stage I ablation" not in beyond  # each table lists the parts it used


def check_beyond(quality, plan: dict, output: str) -> None:
    blocks = [block for block in output.split("\n\n") if "|---" in block]
    assert len(blocks) == 3, output
    labels = quality.beyond_labels(plan)
    check_table(blocks[0], [(label,) for label in labels])
    check_table(blocks[1], [(label,) for label in labels if label != quality.LINEAR])
    tta = [f"{quality.beyond_label(row)}{quality.tta_suffix(row)}" for row in plan["beyond"]["brain"]
           if row.get("uncertainty")]
    knee = plan["beyond"]["knee"][0]
    spearman = data_rows(blocks[2])  # every beyond row on the brain volume, the knee's on the knee
    assert [row[0] for row in spearman] == [*tta, f"{quality.beyond_label(knee)}{quality.tta_suffix(knee)}"]
    # a 4-step model may fall back to the untrained one (exactly linear): its flips agree, the map is
    # constant and ranks nothing (NaN); a trained one's correlation is a number in [-1, 1]
    assert all(-1 <= float(row[2]) <= 1 or math.isnan(float(row[2])) for row in spearman)
    # the rows' own time: every part of the time line but the stores and stage I (whole seconds there)
    own = re.search(r"Its rows' own parts \(.*\): ([0-9.]+) s \(([0-9.]+) min\)\.", output)
    listed = re.search(r"Time per part \(seconds, summed over resumed runs\): (.*)\.\n", output)
    assert own and listed, output
    seconds = {name: float(value) for name, value in re.findall(r"(.+?) ([0-9]+)(?:, |$)", listed.group(1))}
    shared = {"brain LR store", "knee LR store", "stage I", "synthesis"}
    assert shared <= set(seconds) and len(seconds) > len(shared) + 4, listed.group(1)
    for row in plan["beyond"]["brain"]:  # a second phase is a part of its own
        if row.get("then"):
            assert f"{quality.beyond_label(row)} (then {row['then']['steps']} steps)" in seconds, listed.group(1)
    expected = sum(value for name, value in seconds.items() if name not in shared)
    assert abs(float(own.group(1)) - expected) <= 0.5 * len(seconds), (own.group(0), expected)


def test_quality_quick_beyond_only(untouched_results, capsys):
    from benchmarks import quality

    output = run_quick(quality, capsys, "--parts", "beyond")
    plan = quality.load_plan(quality.PLAN, quick=True)
    assert output.count("Command:") == 1 and "`python benchmarks/quality.py --quick --parts beyond`" in output
    check_beyond(quality, plan, output)
    # the paper's parts did not run; stage I did, for the `both` row's synthetic pairs
    assert "only (brain)" not in output and "ablation" not in output and "Fig. 9" not in output
    assert "stage I " in output and "synthesis " in output


@pytest.mark.parametrize("name", ["quality", "clinical"])
def test_missing_volumes_are_a_usage_error_before_any_work(tmp_path, capsys, name):
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as stopped:
        module.main(["--workdir", str(tmp_path / "work"), "--brain-train", str(tmp_path / "missing"),
                     "--brain-eval", str(tmp_path / "gone.nii.gz"), "--no-write"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"--brain-train {tmp_path / 'missing'}: no such file or folder" in err and "gone.nii.gz: no such file" in err
    assert not (tmp_path / "work").exists()


def test_learning_quick(untouched_results, capsys):
    output = run_quick(learning, capsys)
    table = output[output.index("Command:"):]
    check_table(table, [(name,) for name in learning.CASES])


def test_clinical_quick(untouched_results, capsys):
    output = run_quick(clinical, capsys)
    plan = clinical.load_plan(clinical.PLAN, quick=True)
    blocks = [block for block in output.split("\n\n") if "|---" in block]
    assert len(blocks) == 3, output
    ratios = data_rows(blocks[0])
    assert [float(row[0]) for row in ratios] == [float(r) for r in plan["ratios"]]
    assert all(row[5] != "-" for row in ratios if float(row[0]) in plan["fixed"])  # the fixed-ratio models scored
    alone = [row for row in ratios if float(row[0]) in plan["alone_on_range_scans"]]
    assert alone and all(row[6] != "-" and row[7] != "-" for row in alone)  # one ratio alone on the range scans
    assert all(row[8] != "-" and row[10] != "-" for row in ratios)  # the one-model variants at every ratio
    assert all(row[9] != "-" and row[11] != "-" for row in alone)
    # the seed study: each ratio and volume once, a gain, a single-ratio gain and a gap per seed
    study = plan["seed_study"]
    seeds = data_rows(blocks[1])
    assert sorted(float(row[0]) for row in seeds) == sorted(float(r) for r in study["ratios"])  # one held-out volume
    assert all(len(row[cell].split(" / ")) == len(study["seeds"]) for row in seeds for cell in (3, 4, 5))
    profiles = [row[0] for row in data_rows(blocks[2])]
    assert profiles.count("point") == 2 and len(profiles) == 2 * (1 + len(plan["thickness"]["profiles"]))
    # each table is its own RESULTS.md section, with its own command line and part times
    ratio_section, seed_section, thickness_section = output.split("Command: `python benchmarks/clinical.py --quick`")[1:]
    seed_times = next(line for line in seed_section.splitlines() if line.startswith("Time per part"))
    # the plan's seed reuses the ratio table's models (their names); another seed trains its own
    for name in ("ratio 4", "ratio 2 on the range scans", "from ratio 4, half integers"):
        assert f"{name} " in seed_times and f"{name}, seed 1 " in seed_times
    ratio_times, thickness_times = (next(line for line in section.splitlines() if line.startswith("Time per part"))
                                    for section in (ratio_section, thickness_section))
    assert "score ratio 4" in ratio_times and "box" not in ratio_times
    for item in plan.get("ratio_set", []):  # the ratio table's own settings, named there only
        assert item in ratio_section and item not in thickness_section
    assert "box" in thickness_times and "score ratio" not in thickness_times
    # the brain LR store that the ratio table built first is also a part of the thickness table
    assert "brain LR store (1 slice of every 4)" in ratio_times and "brain LR store (1 slice of every 4)" in thickness_times


def test_the_seed_study_s_gaps_pair_each_seed_s_models():
    rows = [{"ratio": 4.0, "volume": "v", "seed": seed, "method": method, "psnr_missing": value}
            for seed, values in ((0, (30.0, 31.0, 31.5, 30.5)), (1, (30.0, 31.4, 31.2, None)))
            for method, value in zip(("linear", clinical.ONE_MODEL, f"{clinical.SINGLE}, its scans",
                                      f"{clinical.SINGLE}, range scans"), values)
            if value is not None]
    gaps = clinical.seed_gaps(rows)
    assert gaps == {(4.0, "v"): {0: (30.0, 31.0, 31.5), 1: (30.0, 31.4, 31.2)}}  # the best single-ratio model
    plan = {"ratio_range": [2, 6], "steps": 5, "seed": 0, "supervision": "inplane",
            "seed_study": {"seeds": [0, 1], "ratios": [4], "variant": "v"}}

    class Args:
        quick, parts, plan = False, ["seeds"], str(clinical.PLAN)

    class NoParts:
        def seconds(self, used):
            return {}

    table = clinical.seed_table(Args, plan, NoParts(), rows, [])
    row = data_rows(table)[0]
    assert row[3:] == ["+1.00 / +1.40", "+1.50 / +1.20", "-0.50 / +0.20", "-0.15"]


def test_a_seed_study_without_a_model_to_compare_with_is_refused_before_any_work(tmp_path):
    plan = {"ratio_range": [2, 6], "fixed": [4], "alone_on_range_scans": [2],
            "seed_study": {"seeds": [0, 1], "ratios": [3, 4]}}
    with pytest.raises(ValueError, match=r"seed_study.ratios \[3\]: no single-ratio model"):
        clinical.seed_study_variant(plan)
    with pytest.raises(ValueError, match="seed_study.variant 'longer' is none"):
        clinical.seed_study_variant({**plan, "seed_study": {"seeds": [0], "ratios": [4], "variant": "longer"}})
    assert clinical.seed_study_variant({**plan, "seed_study": {"seeds": [0], "ratios": [2, 4]}}) is None
    # through the command: refused before the ratio table runs, nothing written
    import yaml

    bad = yaml.safe_load(clinical.PLAN.read_text())
    bad["seed_study"]["ratios"] = [3]
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(bad))
    volume = tmp_path / "hr.nii.gz"
    volume.write_bytes(b"")
    with pytest.raises(ValueError, match="no single-ratio model"):
        clinical.main(["--plan", str(plan_file), "--workdir", str(tmp_path / "work"), "--brain-train", str(volume),
                       "--brain-eval", str(volume), "--knee", str(volume), "--no-write"])
    assert not (tmp_path / "work").exists()


def test_clinical_quick_one_table(untouched_results, capsys):
    output = run_quick(clinical, capsys, "--parts", "thickness")
    assert "Command: `python benchmarks/clinical.py --quick --parts thickness`" in output
    assert "one model" not in output and len([b for b in output.split("\n\n") if "|---" in b]) == 1


def test_the_clinical_ratio_table_s_own_settings():
    plan = {"steps": 5, "set": ["model.name=throughplane2d"], "ratio_set": ["train.lr=1e-3"]}
    assert clinical.ratio_settings(plan) == {"steps": 5, "set": ["model.name=throughplane2d", "train.lr=1e-3"]}
    assert clinical.ratio_settings({**plan, "ratio_set": []})["set"] == ["model.name=throughplane2d"]
    with pytest.raises(ValueError, match="ratio_set"):
        clinical.ratio_settings({**plan, "ratio_set": "train.lr=1e-3"})
