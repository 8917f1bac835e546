"""Quality: the paper's Table 1 on the real volumes in one command, trained on thick-slice scans only.

    python benchmarks/quality.py [--workdir runs/quality] [--output DIR] [--eval-dir DIR] [--plan FILE]
                                 [--parts paper beyond]
    python benchmarks/quality.py --quick

Brain: the training pool (../shared/data/brain/train) decimated to every K-th slice of axis 2 and written
as NIfTI files with K times the slice spacing, then the product path a user's scans take:
`preprocessing.to_zarr`, stage I, synthesis, stage II. Scored with `slicesr evaluate` on each held-out
brain volume (and every NIfTI of --eval-dir). Knee (the paper's domain): the DESS knee decimated along
axis 2, trained on that LR scan alone with the brain's recipe (nothing tuned on the knee), scored on its
missing slices. No HR volume is used for training, except by the supervised bounds ("... only": the same
generator, steps, batch and patch trained on the HR versions of the brain training pool).

Rows: linear, cubic, VAE-based up-sampling, the proposed method with each generator (the paper's recipe),
the proposed method with the slicesr recipe (options that depart from the paper, named in the plan), the
supervised bounds, and the rows trained on pairs from the LR scans' own in-plane axes (`beyond` in the plan:
`sr.supervision` inplane alone and both, with the synthetic pairs; slicesr.stage2.inplane); the paper's
Table 1 (SKI10 knees, GPU scale) beside them. Ablations: stage I runs of
equal, shorter length with all losses, eta = 0 and beta = 0, scored as VAE-based up-sampling, and Fig. 9's
d1, d2, d3 with and without L_comp with a paired t-test. Every part's length is fixed in the plan
(benchmarks/quality.yaml) and its time printed. Started again with the same --workdir, trainings resume
from their checkpoints and finished parts are skipped. `--quick`: the plan's quick section on phantoms.

Two tables, each its own section of RESULTS.md: the paper's (`--parts paper`) and the rows beyond it
(`--parts beyond`: the in-plane rows, TTA, uncertainty, adaptation, beside linear and cubic; it trains
stage I only when a row needs the synthetic pairs). Both by default.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.results import benchmark_parser, figures_dir, parse_arguments, publish  # noqa: E402
from slicesr.cli_common import setup_logging  # noqa: E402
from slicesr.config import load_config  # noqa: E402
from slicesr.inference import UNCERTAINTY_SMOOTHING_MM  # noqa: E402

PLAN = HERE / "quality.yaml"
LINEAR, CUBIC, VAE = "linear", "cubic", "VAE-based up-sample"
RECIPE = " (slicesr recipe)"
PARTS = ("paper", "beyond")
# The paper's Table 1 (SKI10 knees, K = 4, 50 test volumes): PSNR and SSIM means
PAPER = {"linear": (27.152, 0.797), VAE: (18.995, 0.358), "DCSRN only": (28.910, 0.850),
         "Proposed with DCSRN": (28.470, 0.835), "DeepResolve only": (31.005, 0.891),
         "Proposed with DeepResolve": (30.058, 0.870)}


# --------------------------------------------------------------------------- plan and bookkeeping
def load_plan(path: Path, quick: bool) -> dict[str, Any]:
    plan = yaml.safe_load(path.read_text())
    quick_part = plan.pop("quick", {})
    if quick:
        plan.update(quick_part)
    try:
        check_beyond_rows(plan)
    except ValueError as error:  # before hours of training, not when the row's turn comes
        raise ValueError(f"{path}: {error}") from None
    return plan


BEYOND_ROW_KEYS = {"generator", "supervision", "steps", "uncertainty", "adapt_steps", "adapt_tta", "adapt_patch",
                   "tta_angles", "slice_flips_tta", "set", "then"}


def check_beyond_rows(plan: dict[str, Any]) -> None:
    """Every row of the beyond table names a generator of the plan, a pair source, its steps, and valid
    settings and adaptation counts."""
    for set_name, rows in plan.get("beyond", {}).items():
        if set_name == "set":
            continue
        for row in rows:
            if not isinstance(row, dict):
                raise ValueError(f"the beyond row {row!r} ({set_name}) must be a mapping")
            if unknown := sorted(set(row) - BEYOND_ROW_KEYS):
                raise ValueError(f"the beyond row {row} has unknown keys {unknown}; known: {sorted(BEYOND_ROW_KEYS)}")
            if row.get("generator") not in plan.get("generators", {}):
                raise ValueError(f"the beyond row {row} names generator {row.get('generator')!r}; the plan's "
                                 f"generators are {sorted(plan.get('generators', {}))}")
            if row.get("supervision") not in ("inplane", "both"):
                raise ValueError(f"the beyond row {row} has supervision {row.get('supervision')!r}; it must be "
                                 "inplane or both")
            if not is_count(row.get("steps")):
                raise ValueError(f"the beyond row {row} needs a positive number of training `steps`")
            beyond_settings(plan, row)
            then_settings(plan, row)
            adapt_counts(row)
            if not isinstance(row.get("adapt_tta", False), bool):
                raise ValueError(f"the beyond row {row} has `adapt_tta: {row['adapt_tta']!r}`; it must be true or false")
            if row.get("adapt_tta") and not adapt_counts(row):
                raise ValueError(f"the beyond row {row} has `adapt_tta` without `adapt_steps`: nothing to augment")
            row_tta_angles(row)
            if not isinstance(row.get("slice_flips_tta", False), bool):
                raise ValueError(f"the beyond row {row} has `slice_flips_tta: {row['slice_flips_tta']!r}`; it must be "
                                 "true or false")
            if row.get("adapt_patch") is not None:
                row_adapt_patch(row, plan.get("k"))
                if not adapt_counts(row):
                    raise ValueError(f"the beyond row {row} has `adapt_patch` without `adapt_steps`: nothing adapts")
            if row.get("tta_angles") and not (row.get("uncertainty") or row.get("adapt_tta")
                                              or row.get("slice_flips_tta")):
                raise ValueError(f"the beyond row {row} has `tta_angles` but none of `uncertainty`, `adapt_tta`, "
                                 "`slice_flips_tta`: "
                                 "no row of it is augmented")
            # the row's label and run folder say "sub-pixel" from its own settings: elsewhere it would be hidden
            shared = [*plan["generators"][row["generator"]].get("set", []), *plan["beyond"].get("set", [])]
            if row_subpixel({"set": shared}):
                raise ValueError(f"the beyond row {row} gets model.subpixel from its generator's or the beyond "
                                 "table's `set`; set it in the row's own `set` (it names the row and its run folder)")


def digest(*texts: str) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def models_named(args: Any) -> list[str]:
    """Digests of the trained models that `args` name (a model folder, alone or as `label=folder` or
    `key=folder`, also inside lists): a part that scores or starts from a model retrained in the same folder
    is done again, not taken from before."""
    if isinstance(args, (list, tuple)):
        return [d for arg in args for d in models_named(arg)]
    if not isinstance(args, str):
        return []
    weights = Path(args.rsplit("=", 1)[-1]) / "model.safetensors"
    return [hashlib.sha256(weights.read_bytes()).hexdigest()[:12]] if weights.is_file() else []


class Parts:
    """Finished parts and the seconds spent on each (summed over resumed runs), in workdir/parts.json.
    A part is done again when its arguments (plan settings, inputs, the weights of the models it names)
    changed."""

    def __init__(self, workdir: Path):
        self.path = workdir / "parts.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.used: list[str] = []  # the parts this run asked for, done now or before, in order

    def run(self, name: str, fn, *args) -> Any:
        key = digest(fn.__name__, json.dumps(args, sort_keys=True, default=str), *models_named(args))
        entry = self.state.get(name) or {}
        if name not in self.used:
            self.used.append(name)
        if entry.get("done") and entry.get("key") == key:
            return entry.get("result")
        started = time.perf_counter()
        result = fn(*args)
        seconds = (entry.get("seconds", 0.0) if entry.get("key") == key else 0.0) + time.perf_counter() - started
        self.state[name] = {"done": True, "key": key, "seconds": seconds, "result": result}
        self.path.write_text(json.dumps(self.state, indent=1))
        print(f"part {name}: {seconds:.0f} s", flush=True)
        return result

    def seconds(self, names: list[str] | None = None) -> dict[str, float]:
        """Seconds per part: of `names` only (in their order) when given."""
        if names is None:
            return {name: entry["seconds"] for name, entry in self.state.items()}
        return {name: self.state[name]["seconds"] for name in names if name in self.state}


# --------------------------------------------------------------------------- data
def make_lr_store(hr_inputs: list[str], workdir: Path, name: str, k: int, axis: int) -> str:
    """LR NIfTI files (every K-th slice, preprocessing.degrade) and their slice store (preprocessing.to_zarr)."""
    from preprocessing.degrade import degrade_files
    from preprocessing.to_zarr import convert

    written, failures = degrade_files(hr_inputs, str(workdir / f"{name}_lr_nifti"), k, axis)
    store = str(workdir / f"{name}_lr.zarr")
    report = convert([str(workdir / f"{name}_lr_nifti")], store, slice_axis=axis, workers=0, progress=False)
    if failures or report.failures:
        raise RuntimeError(f"LR data for {name}: {failures + report.failures}")
    return store


def make_hr_store(hr_inputs: list[str], workdir: Path, axis: int) -> str:
    from preprocessing.to_zarr import convert

    store = str(workdir / "brain_hr.zarr")
    report = convert(hr_inputs, store, slice_axis=axis, workers=0, progress=False)
    if report.failures:
        raise RuntimeError(f"HR store: {report.failures}")
    return store


# --------------------------------------------------------------------------- training
# A part's key is its arguments: each training receives only its own settings, so that changing one
# part of the plan retrains that part alone.
PART_MARKER = "benchmark-part.json"


def claim_run_folder(runs: Path, name: str, config_path: str, overrides: list[str]) -> None:
    """Make runs/name the folder of a training with these settings. An interrupted training of the same
    settings resumes in it; one of other settings (a part whose plan changed) is moved aside to
    `name.before-<its digest>`, kept, so that the trainer starts afresh instead of refusing to resume. A
    folder written before these markers existed is resumed (the trainer refuses incompatible settings)."""
    key = digest(config_path, json.dumps(overrides))
    folder = Path(runs) / name
    marker = folder / PART_MARKER
    if marker.exists():
        previous = json.loads(marker.read_text()).get("key")
        if previous != key:
            aside = folder.with_name(f"{name}.before-{previous}")
            if aside.exists():
                shutil.rmtree(aside)  # an older copy of the same superseded settings
            folder.rename(aside)
            print(f"{folder}: trained with other settings; moved to {aside}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"key": key, "config": config_path, "overrides": overrides}, indent=1))


def train_vae(config_path: str, part: dict, seed: int, k: int, store: str, runs: Path, name: str, *extra: str) -> str:
    from slicesr.stage1.train import Stage1Trainer

    overrides = [f"data.store={store}", f"run.storage_path={runs}", f"run.name={name}", f"train.max_steps={part['steps']}",
                 f"schedule.phase_steps={part['phase_steps']}", f"train.seed={seed}", f"synthesis.k={k}", *extra]
    config = load_config(config_path, overrides)
    claim_run_folder(runs, name, config_path, overrides)
    trainer = Stage1Trainer(config)
    trainer.fit()
    return str(trainer.best_dir)


def train_sr(config_path: str, settings: dict, seed: int, k: int, store: str, supervision: str, runs: Path, name: str,
             *extra: str) -> str:
    from slicesr.stage2.train import Stage2Trainer

    overrides = [f"data.store={store}", f"run.storage_path={runs}", f"run.name={name}", f"sr.supervision={supervision}",
                 f"sr.k={k}", f"train.max_steps={settings['steps']}", f"train.seed={seed}", *settings["set"], *extra]
    config = load_config(config_path, overrides)
    claim_run_folder(runs, name, config_path, overrides)
    trainer = Stage2Trainer(config)
    trainer.fit()
    return str(trainer.best_dir)


# --------------------------------------------------------------------------- scoring
def score_set(volumes: list[str], k: int, methods: list[str], output: Path, axis: int, figures: bool = False,
              uncertainty: bool = False, smoothing_mm: float = UNCERTAINTY_SMOOTHING_MM,
              adapt_steps: int = 0, tta: bool = False, tta_angles: tuple[float, ...] = (),
              adapt_patch: list[int] | None = None, tta_flips: str = "all") -> list[dict]:
    """`slicesr evaluate` over `volumes`; the rows of its metrics.csv (with its figures when asked; with
    `uncertainty`, the trained methods with test-time augmentation and their maps' Spearman, the maps
    smoothed in-plane by `smoothing_mm` millimetres; with `adapt_steps`, the trained generators fine-tuned on each
    LR scan first; with `tta`, the trained methods with test-time augmentation, without maps; `tta_angles`: that
    augmentation on the slices rotated in-plane as well; `adapt_patch`: the adaptation's own training patch;
    `tta_flips`: which flips the augmentation averages)."""
    from slicesr.evaluate import evaluate

    result = evaluate(volumes, k, methods, str(output), slice_axis=str(axis), figures=figures, progress=False,
                      tta=tta, uncertainty=uncertainty, uncertainty_smoothing_mm=smoothing_mm,
                      adapt_steps=adapt_steps, tta_angles=tuple(tta_angles),
                      adapt_patch=tuple(adapt_patch) if adapt_patch else None, tta_flips=tta_flips)
    if result.failures:
        raise RuntimeError(f"evaluation in {output}: {result.failures}")
    return result.rows


def score_methods(parts: Parts, set_name: str, volumes: list[str], k: int, methods: list[str], output: Path,
                  axis: int) -> list[dict]:
    """Each method scored on every volume of the set as a part of its own: started again, or with a row
    added to the plan, only what is new is scored."""
    rows = []
    for method in methods:
        label = method.split("=", 1)[0]
        slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
        rows += parts.run(f"score {label} ({set_name})", score_set, volumes, k, [method], output / set_name / slug, axis)
    return rows


# Fig. 4/5 style figures: these rows on the first held-out brain volume (one evaluation with figures)
FIGURE_ROWS = (LINEAR, CUBIC, VAE, "Proposed with DeepResolve", "Proposed with through-plane 2D",
               "through-plane 2D only")


def fig9(models: dict[str, str], volumes: list[str], k: int, axis: int) -> dict[str, Any]:
    """Fig. 9 distances per model (means over every sample of every volume) and the paired t-test of
    each distance between the first and the second model (same slices)."""
    from scipy.stats import ttest_rel

    from slicesr.stage1.synthesis import latent_distance_samples
    from slicesr.stage1.train import load_vae

    samples = {}
    for label, path in models.items():
        model = load_vae(path)[0]
        per_volume = [latent_distance_samples(model, datasets.normalized_slices(v, axis), k) for v in volumes]
        samples[label] = {key: np.concatenate([s[key] for s in per_volume]) for key in ("d1", "d2", "d3")}
    first, second = list(samples)
    out = {label: {key: float(values.mean()) for key, values in s.items()} for label, s in samples.items()}
    out["p"] = {key: float(ttest_rel(samples[first][key], samples[second][key]).pvalue) for key in ("d1", "d2", "d3")}
    out["n"] = {key: int(samples[first][key].size) for key in ("d1", "d2", "d3")}
    return out


# --------------------------------------------------------------------------- the run
def ablation_label(plan: dict, label: str) -> str:
    return f"{VAE} ({label}, {plan['ablation_vae']['steps']} steps)"


# labels name no "=": `slicesr evaluate` reads LABEL=MODEL
ABLATIONS = (("all losses", ()), ("without L_comp, eta 0", ("schedule.no_compactness=true",)),
             ("without L_adv, beta 0", ("schedule.no_adversarial=true",)))


def method_labels(plan: dict) -> list[str]:
    """The paper's table's rows in order: baselines, the proposed method per generator, the slicesr recipe,
    the supervised bounds, the stage I ablations."""
    from slicesr.models.generators import display_name

    generators = [display_name(g) for g in plan["generators"]]
    return [LINEAR, CUBIC, VAE, *[f"Proposed with {g}" for g in generators],
            f"Proposed with {display_name(plan['recipe']['generator'])}{RECIPE}",
            *[f"{g} only" for g in generators], *[ablation_label(plan, label) for label, _ in ABLATIONS]]


def beyond_labels(plan: dict) -> list[str]:
    """The beyond table's rows in order (`beyond_part`'s): linear, cubic, each brain row, then each row
    again with test-time augmentation and with per-scan adaptation; then the knee's rows that the brains
    lack, in the same order."""
    def set_labels(rows: list[dict]) -> list[str]:
        again = [[f"{beyond_label(row)}{tta_suffix(row)}"] * bool(row.get("uncertainty"))
                 + [f"{beyond_label(row)}{tta_suffix(row, 'slice')}"] * bool(row.get("slice_flips_tta"))
                 + [adapted_label(row, steps) for steps in adapt_counts(row)] for row in rows]
        return [LINEAR, CUBIC, *[beyond_label(row) for row in rows], *[label for labels in again for label in labels]]

    beyond = plan.get("beyond", {})
    return list(dict.fromkeys(set_labels(beyond.get("brain", [])) + set_labels(beyond.get("knee", []))))


def settings_list(value: Any, where: str) -> list[str]:
    """A plan's list of KEY=VALUE override strings (`set` and the like), or an error naming `where` it is."""
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise ValueError(f"{where}: {value!r}; it must be a list of KEY=VALUE strings")
    return value


def is_count(value: Any) -> bool:
    """A positive integer; YAML's `true` is a bool (an int to Python), not a count."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def adapt_counts(row: dict) -> list[int]:
    """A beyond row's `adapt_steps`: one count of per-scan adaptation steps or a list of them (each a row of
    its own: what more steps buy, at what cost per scan); none when absent."""
    counts = row.get("adapt_steps") or []
    counts = counts if isinstance(counts, list) else [counts]
    if not all(is_count(c) for c in counts):
        raise ValueError(f"the beyond row {row} has `adapt_steps: {row.get('adapt_steps')!r}`; it must be a "
                         "positive step count or a list of them")
    return counts


def adapted_label(row: dict, steps: int) -> str:
    """`slicesr evaluate`'s label of the row adapted `steps` steps (and with test-time augmentation when the row
    has `adapt_tta`: the adapted copy's predictions averaged over the flips)."""
    patch = row_adapt_patch(row)
    return (f"{beyond_label(row)}{tta_suffix(row) if row.get('adapt_tta') else ''} (adapted, {steps} steps"
            + (f", patch {'x'.join(map(str, patch))})" if patch else ")"))


def row_adapt_patch(row: dict, k: int | None = None) -> tuple[int, int, int] | None:
    """A beyond row's `adapt_patch`: the per-scan adaptation's training patch, or None (the model's own)."""
    from slicesr.inference import check_adapt_patch

    patch = row.get("adapt_patch")
    if patch is not None and not isinstance(patch, list):
        raise ValueError(f"the beyond row {row} has `adapt_patch: {patch!r}`; it must be [slices, rows, cols]")
    try:
        return check_adapt_patch(patch, k)
    except ValueError as error:
        raise ValueError(f"the beyond row {row}: {error}") from None


def row_tta_angles(row: dict) -> tuple[float, ...]:
    """A beyond row's `tta_angles`: in-plane rotations (degrees) added to its test-time augmentation."""
    from slicesr.inference import check_tta_angles

    angles = row.get("tta_angles") or []
    if not isinstance(angles, list) or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in angles):
        raise ValueError(f"the beyond row {row} has `tta_angles: {row.get('tta_angles')!r}`; it must be a list of "
                         "angles in degrees")
    try:
        return check_tta_angles(angles)
    except ValueError as error:
        raise ValueError(f"the beyond row {row}: {error}") from None


def tta_suffix(row: dict, flips: str = "all") -> str:
    """`slicesr evaluate`'s label suffix of the row's test-time augmentation (of these flips)."""
    from slicesr.inference import tta_label

    return tta_label(row_tta_angles(row), flips)


def beyond_label(row: dict) -> str:
    from slicesr.stage2.train import method_label

    return method_label(row["generator"], row["supervision"], row_subpixel(row))


def row_subpixel(row: dict) -> bool:
    """Whether a beyond row's own settings (`set`) make its generator a sub-pixel one (`model.subpixel`):
    another row and another run folder than the same generator without it."""
    from slicesr.config import apply_override

    tree: dict = {}
    for assignment in row.get("set", []):
        tree = apply_override(tree, assignment)
    return bool(tree.get("model", {}).get("subpixel", False))


def beyond_run_name(row: dict) -> str:
    return f"{row['generator']}-{row['supervision']}" + ("-subpixel" if row_subpixel(row) else "")


def beyond_settings(plan: dict, row: dict) -> dict:
    """A beyond row's training: its generator's settings of the plan, then the row's own (`set`), its own
    length."""
    own = settings_list(row.get("set", []), f"the beyond row {row} has `set`")
    return {"steps": row["steps"], "set": [*plan["generators"][row["generator"]]["set"], *own]}


def then_settings(plan: dict, row: dict) -> dict | None:
    """A beyond row's second phase (`then: {steps: N, set: [...]}`): its trained model trained N more steps
    from its weights (sr.init_from) with its settings and `then`'s own after them (longer planes, say); None
    without one. The architecture (model.*) stays the first phase's: the weights must fit it."""
    then = row.get("then")
    if then is None:
        return None
    if not isinstance(then, dict) or set(then) - {"steps", "set"}:
        raise ValueError(f"the beyond row {row} has `then: {then!r}`; it must be a mapping of `steps` and `set`")
    if not is_count(then.get("steps")):
        raise ValueError(f"the beyond row {row} needs a positive number of `steps` in `then`")
    own = settings_list(then.get("set", []), f"the beyond row {row} has `then: set`")
    if model_keys := [item for item in own if item.strip().startswith("model.")]:
        raise ValueError(f"the beyond row {row} changes the model in `then` ({', '.join(model_keys)}): the second "
                         "phase starts from the first phase's weights, so it keeps its architecture")
    return {"steps": then["steps"], "set": [*beyond_settings(plan, row)["set"], *own]}


class Shared:
    """The stores and stage I runs that both tables may use, each a part of its own (done once: `Parts`
    returns a finished part's result). `names`: the parts it ran, which neither table's own time counts."""

    def __init__(self, args, plan: dict, parts: Parts):
        self.args, self.plan, self.parts = args, plan, parts
        self.workdir, self.k, self.seed = Path(args.workdir), plan["k"], plan["seed"]
        self.runs = self.workdir / "runs"
        self.names: set[str] = set()

    def run(self, name: str, fn, *args) -> Any:
        self.names.add(name)
        return self.parts.run(name, fn, *args)

    def lr_brain(self) -> str:
        return self.run("brain LR store", make_lr_store, self.args.brain_train, self.workdir, "brain", self.k,
                        self.args.brain_axis)

    def lr_knee(self) -> str:
        return self.run("knee LR store", make_lr_store, [self.args.knee], self.workdir, "knee", self.k,
                        self.args.knee_axis)

    def vae(self) -> str:
        return self.run("stage I", train_vae, self.plan["vae"]["config"], self.plan["vae"], self.seed, self.k,
                        self.lr_brain(), self.runs, "vae")

    def synthetic(self) -> str:
        return self.run("synthesis", datasets.synthesize_hr, self.vae(), self.lr_brain(),
                        str(self.workdir / "brain_synthetic.zarr"), self.k, False)

    def knee_vae(self) -> str:
        return self.run("knee stage I", train_vae, self.plan["vae"]["config"], self.plan["knee_vae"], self.seed,
                        self.k, self.lr_knee(), self.runs, "knee-vae", "train.val_fraction=0")

    def knee_synthetic(self) -> str:
        return self.run("knee synthesis", datasets.synthesize_hr, self.knee_vae(), self.lr_knee(),
                        str(self.workdir / "knee_synthetic.zarr"), self.k, False)


def absolute_workdir(args) -> Path:
    """`args.workdir` made absolute, in place: a part's key holds the paths it reads and writes under the
    workdir, so `runs/quality` and the same folder spelled from / must find the same finished parts (one
    spelling retrained a finished row in place of the other: benchmarks/NOTES.md, twenty-first session)."""
    args.workdir = str(Path(args.workdir).resolve())
    return Path(args.workdir)


def run(args) -> int:
    setup_logging()
    plan = load_plan(Path(args.plan), args.quick)
    workdir = absolute_workdir(args)
    workdir.mkdir(parents=True, exist_ok=True)
    parts = Parts(workdir)
    shared = Shared(args, plan, parts)
    eval_volumes = [*args.brain_eval, *sorted(str(p) for p in Path(args.eval_dir).glob("*.nii*"))] if args.eval_dir \
        else list(args.brain_eval)
    output = Path(args.output) if args.output else workdir / "eval"
    # each table lists the parts it used, those the other table ran first included
    if "paper" in args.parts:
        parts.used = []
        brain_rows, knee_rows, distances = paper_part(args, plan, parts, shared, eval_volumes, output)
        publish(args, "quality", "Quality: Table 1 on the brain and knee volumes, trained without HR",
                table(args, plan, parts, brain_rows, knee_rows, distances, eval_volumes, list(parts.used)))
    if "beyond" in args.parts and plan.get("beyond"):
        parts.used = []
        brain_rows, knee_rows = beyond_part(args, plan, parts, shared, eval_volumes, output)
        used = list(parts.used)
        publish(args, "quality-beyond", "Quality beyond the paper: in-plane pairs, test-time augmentation, "
                "uncertainty, per-scan adaptation",
                beyond_table(args, plan, parts, brain_rows, knee_rows, eval_volumes, used,
                             [name for name in used if name not in shared.names]))
    return 0


def paper_part(args, plan: dict, parts: Parts, shared: Shared, eval_volumes: list[str], output: Path
               ) -> tuple[list[dict], list[dict], dict]:
    """The paper's table: stage I and its ablations, the proposed method per generator, the slicesr recipe,
    the supervised bounds, the knee; scored, with figures and Fig. 9's distances."""
    k, seed, runs = plan["k"], plan["seed"], shared.runs
    brain_axis, knee_axis = args.brain_axis, args.knee_axis
    lr_brain, lr_knee = shared.lr_brain(), shared.lr_knee()
    hr_brain = parts.run("brain HR store (supervised bounds only)", make_hr_store, args.brain_train, shared.workdir,
                         brain_axis)
    vae_config = plan["vae"]["config"]

    def sr_part(generator: str) -> tuple:
        return plan["sr_config"], plan["generators"][generator], seed, k

    vae = shared.vae()
    ablations = {}
    for label, extra in ABLATIONS:
        name = "ablation-" + label.split(",")[-1].strip().replace(" ", "")
        ablations[label] = parts.run(f"stage I ablation ({label})", train_vae, vae_config, plan["ablation_vae"], seed, k, lr_brain,
                                     runs, name, *extra)
    recipe = plan["recipe"]
    synthetic = shared.synthetic()
    synthetic_kept = parts.run("synthesis (acquired slices kept)", datasets.synthesize_hr, vae, lr_brain,
                               str(shared.workdir / "brain_synthetic_kept.zarr"), k, True) if recipe["keep_acquired"] \
        else synthetic

    from slicesr.models.generators import display_name

    brain_methods, bounds = [LINEAR, CUBIC, f"{VAE}={vae}"], []
    for generator in plan["generators"]:
        label = f"Proposed with {display_name(generator)}"
        brain_methods.append(f"{label}={parts.run(label, train_sr, *sr_part(generator), synthetic, 'synthetic', runs, generator)}")
        bound = f"{display_name(generator)} only"
        bounds.append(f"{bound}={parts.run(bound, train_sr, *sr_part(generator), hr_brain, 'real', runs, generator + '-only')}")
    recipe_label = f"Proposed with {display_name(recipe['generator'])}{RECIPE}"
    recipe_model = parts.run(recipe_label, train_sr, *sr_part(recipe["generator"]), synthetic_kept, "synthetic", runs,
                             recipe["generator"] + "-recipe", *recipe["set"])
    brain_methods.append(f"{recipe_label}={recipe_model}")
    brain_methods += bounds
    ablation_methods = [f"{ablation_label(plan, label)}={path}" for label, path in ablations.items()]

    # knee: its own LR scan only, the brain's settings
    knee_vae, knee_synthetic = shared.knee_vae(), shared.knee_synthetic()
    knee_kept = parts.run("knee synthesis (acquired slices kept)", datasets.synthesize_hr, knee_vae, lr_knee,
                          str(shared.workdir / "knee_synthetic_kept.zarr"), k, True) if recipe["keep_acquired"] \
        else knee_synthetic
    generator = plan["knee_generator"]
    knee_label = f"Proposed with {display_name(generator)}"
    knee_methods = [LINEAR, CUBIC, f"{VAE}={knee_vae}",
                    f"{knee_label}={parts.run('knee ' + knee_label, train_sr, *sr_part(generator), knee_synthetic, 'synthetic', runs, 'knee-' + generator, 'train.val_fraction=0')}",
                    f"{knee_label}{RECIPE}={parts.run('knee ' + knee_label + RECIPE, train_sr, *sr_part(generator), knee_kept, 'synthetic', runs, 'knee-recipe', 'train.val_fraction=0', *[s for s in recipe['set'] if not s.startswith('sr.validation')])}"]

    brain_rows = score_methods(parts, "brain", eval_volumes, k, brain_methods + ablation_methods, output, brain_axis)
    knee_rows = score_methods(parts, "knee", [args.knee], k, knee_methods, output, knee_axis)
    figure_methods = [m for m in brain_methods if m.split("=", 1)[0] in FIGURE_ROWS]
    parts.run("figures (first held-out brain)", score_set, eval_volumes[:1], k, figure_methods,
              output / "figures", brain_axis, True)
    parts.run("figures (knee)", score_set, [args.knee], k, knee_methods, output / "knee-figures", knee_axis, True)
    distances = parts.run("Fig. 9 distances", fig9, {"with L_comp": ablations["all losses"],
                                                     "without L_comp (eta = 0)": ablations[ABLATIONS[1][0]]},
                          list(args.brain_eval), k, brain_axis)

    from slicesr.evaluate import write_metrics

    write_metrics(brain_rows + knee_rows, output / "metrics.csv")
    figures = figures_dir(args)
    for figure in sorted((output / "figures").glob("*.png")) + sorted((output / "knee-figures").glob("*.png")):
        shutil.copy(figure, figures / f"quality_{figure.name}")
    return brain_rows, knee_rows, distances


def beyond_part(args, plan: dict, parts: Parts, shared: Shared, eval_volumes: list[str], output: Path
                ) -> tuple[list[dict], list[dict]]:
    """The rows trained on pairs from the LR scans' own in-plane axes (issue 13), alone or with the
    synthetic pairs (which need stage I), beside linear and cubic; rows marked `uncertainty` again with
    test-time augmentation and uncertainty maps, rows with `adapt_steps` again with each held-out LR scan's
    own in-plane pairs fine-tuning a copy first (and its predictions averaged over the flips: `adapt_tta`)."""
    beyond, k, seed = plan["beyond"], plan["k"], plan["seed"]
    rows_by_set, calibrations = {}, {"brain": [], "knee": []}
    for set_name, volumes, axis in (("brain", eval_volumes, args.brain_axis), ("knee", [args.knee], args.knee_axis)):
        methods = []
        for row in beyond.get(set_name, []):
            label, inplane = beyond_label(row), row["supervision"] == "inplane"
            if set_name == "brain":
                part, name, extra = label, beyond_run_name(row), list(beyond["set"])
                store = shared.lr_brain() if inplane else shared.synthetic()
            else:  # the knee has no validation scan
                part, name = "knee " + label, f"knee-{beyond_run_name(row)}"
                extra = ["train.val_fraction=0", *[s for s in beyond["set"] if not s.startswith("sr.validation")]]
                store = shared.lr_knee() if inplane else shared.knee_synthetic()
            if not inplane:  # the LR store of this run, not the one the synthetic volumes' records name (it
                # may have been built in another folder)
                extra.append(f"data.lr_store={shared.lr_brain() if set_name == 'brain' else shared.lr_knee()}")
            model = parts.run(part, train_sr, plan["sr_config"], beyond_settings(plan, row), seed, k, store,
                              row["supervision"], shared.runs, name, *extra)
            if (then := then_settings(plan, row)) is not None:  # the second phase, from the first one's best/
                model = parts.run(f"{part} (then {then['steps']} steps)", train_sr, plan["sr_config"], then, seed, k,
                                  store, row["supervision"], shared.runs, f"{name}-then", *extra,
                                  f"sr.init_from={model}")
            methods.append(f"{label}={model}")
        rows = score_methods(parts, set_name, volumes, k, [LINEAR, CUBIC, *methods], output, axis)
        for i, (row, method) in enumerate(zip(beyond.get(set_name, []), methods)):
            # the rotations are an argument only when there are some: the parts of rows without them stay valid
            angles = [list(row_tta_angles(row))] if row.get("tta_angles") else []
            if row.get("uncertainty"):
                folder = output / f"{set_name}-uncertainty" / (str(i) + ("-rot" if angles else ""))
                rows.extend(parts.run(f"score {method.split('=', 1)[0]}{tta_suffix(row) if angles else ''} with "
                                      f"uncertainty ({set_name})", score_set, volumes, k, [method], folder,
                                      axis, True, True, UNCERTAINTY_SMOOTHING_MM, *([0, True] if angles else []),
                                      *angles))
                calibrations[set_name].append(folder / "uncertainty_calibration.png")
            if row.get("slice_flips_tta"):  # the same augmentation on the slice axis's flips alone: half the passes
                folder = output / f"{set_name}-slice-flips" / (str(i) + ("-rot" if angles else ""))
                rows.extend(parts.run(f"score {method.split('=', 1)[0]}{tta_suffix(row, 'slice')} ({set_name})",
                                      score_set, volumes, k, [method], folder, axis, False, False,
                                      UNCERTAINTY_SMOOTHING_MM, 0, True, *(angles or [[]]), None, "slice"))
            for j, steps in enumerate(adapt_counts(row)):
                # the first count keeps the folder that a plan with one count used: its finished parts stay valid
                # as above: the newer arguments only when set, so that older rows keep their parts
                rotated = angles if row.get("adapt_tta") else []
                patch = [list(row_adapt_patch(row))] if row.get("adapt_patch") else []
                folder = output / f"{set_name}-adapted" / ((str(i) if j == 0 else f"{i}-{steps}")
                                                           + ("-tta" if row.get("adapt_tta") else "")
                                                           + ("-rot" if rotated else "")
                                                           + (f"-p{patch[0][0]}" if patch else ""))
                newer = [*(rotated or [[]]), *patch] if patch else rotated  # tta_angles, then adapt_patch
                rows.extend(parts.run(f"score {adapted_label(row, steps)} ({set_name})", score_set, volumes, k,
                                      [method], folder, axis, False, False, UNCERTAINTY_SMOOTHING_MM, steps,
                                      bool(row.get("adapt_tta")), *newer))
        rows_by_set[set_name] = rows

    from slicesr.evaluate import write_metrics

    write_metrics(rows_by_set["brain"] + rows_by_set["knee"], output / "beyond-metrics.csv")
    figures = figures_dir(args)
    for set_name in ("brain", "knee"):
        # this plan's rows only: a folder of a row that changed since (another setting) is not its figure
        for index, figure in enumerate(f for f in calibrations[set_name] if f.is_file()):
            shutil.copy(figure, figures / f"quality_{set_name}_uncertainty_calibration_{index}.png")
    return rows_by_set["brain"], rows_by_set["knee"]


def header(args, plan: dict, training: str) -> list[str]:
    """The command, plan, configs and versions; K and the scoring; `training`: what the rows trained on."""
    import torch

    config_files = [plan["vae"].get("config", ""), plan["sr_config"]]
    flag = "" if set(args.parts) == set(PARTS) else f" --parts {' '.join(args.parts)}"
    return [
        f"Command: `python benchmarks/quality.py{' --quick' if args.quick else ''}{flag}`  ",
        f"Plan {Path(args.plan).name} ({digest(Path(args.plan).read_text())}), configs "
        + ", ".join(f"{c} ({digest(Path(c).read_text())})" for c in config_files)
        + f"; torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, seed {plan['seed']}.  ",
        f"K = {plan['k']}; missing slices (PSNR dB / SSIM), HR min-max normalisation (README 'Scoring protocol'). "
        + training, ""]


def score_tables(rows: list[dict], volumes: list[str], knee: str, paper_column: bool) -> list[str]:
    """PSNR / SSIM per method and volume (and the paper's Table 1 beside them), then the gains over linear."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    scores = {(row["volume"], row["method"]): row for row in rows}
    columns = volumes + [knee]
    lines = ["| method | " + " | ".join(columns) + (" | paper (SKI10 knees, GPU) |" if paper_column else " |"),
             "|---|" + "---:|" * (len(columns) + paper_column)]
    for method in methods:
        cells = []
        for volume in columns:
            row = scores.get((volume, method))
            cells.append(f"{row['psnr_missing']:.2f} / {row['ssim_missing']:.3f}" if row else "-")
        if paper_column:
            paper = PAPER.get(method)
            cells.append(f"{paper[0]:.2f} / {paper[1]:.3f}" if paper else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Gain over linear (PSNR dB, missing slices):", "",
              "| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for method in methods:
        if method == LINEAR:
            continue
        cells = []
        for volume in columns:
            row, base = scores.get((volume, method)), scores.get((volume, LINEAR))
            cells.append(f"{row['psnr_missing'] - base['psnr_missing']:+.2f}" if row and base else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def volume_names(args, eval_volumes: list[str]) -> tuple[list[str], str]:
    from slicesr.nifti import strip_nifti_suffix

    return [strip_nifti_suffix(Path(v).name) for v in eval_volumes], strip_nifti_suffix(Path(args.knee).name)


def times(parts: Parts, used: list[str]) -> str:
    return "Time per part (seconds, summed over resumed runs): " + ", ".join(
        f"{name} {seconds:.0f}" for name, seconds in parts.seconds(used).items()) + "."


def table(args, plan: dict, parts: Parts, brain_rows: list[dict], knee_rows: list[dict], distances: dict,
          eval_volumes: list[str], used: list[str]) -> str:
    volumes, knee = volume_names(args, eval_volumes)
    lines = header(args, plan, "No row but '... only' saw an HR volume in training. The rows trained on the scans' "
                   "own in-plane axes are in the next section.")
    lines += score_tables(brain_rows + knee_rows, volumes, knee, paper_column=True)
    first, second = [key for key in distances if key not in ("p", "n")]
    lines += ["", f"Fig. 9 on the held-out brains (ablation stage I runs of {plan['ablation_vae']['steps']} steps, "
              "paired t-test over the same slices):", "",
              "| model | d1 (xi = 1/4, 3/4) | d2 (xi = 1/2) | d3 (adjacent true slices) |", "|---|---:|---:|---:|"]
    for label in (first, second):
        lines.append(f"| {label} | " + " | ".join(f"{distances[label][key]:.3f}" for key in ("d1", "d2", "d3")) + " |")
    lines.append("| p (paired t-test), n | " + " | ".join(f"{distances['p'][key]:.2g}, {distances['n'][key]}"
                                                         for key in ("d1", "d2", "d3")) + " |")
    lines += ["", times(parts, used)]
    return "\n".join(lines)


def beyond_table(args, plan: dict, parts: Parts, brain_rows: list[dict], knee_rows: list[dict],
                 eval_volumes: list[str], used: list[str], own: list[str]) -> str:
    volumes, knee = volume_names(args, eval_volumes)
    lines = header(args, plan, "No row saw an HR volume in training: pairs from the LR scans' own in-plane axes "
                   "(`inplane`), with the paper's synthetic pairs (`both`); best/ on the LR hold-out (the knee: "
                   "the last step).")
    lines += score_tables(brain_rows + knee_rows, volumes, knee, paper_column=False)
    spearman = [row for row in brain_rows + knee_rows if isinstance(row.get("uncertainty_spearman"), float)]
    if spearman:
        lines += ["", "Uncertainty maps (`--uncertainty`): Spearman correlation with the absolute error over the "
                  "foreground of the missing slices (figures: quality_*_uncertainty_calibration_*.png); beside it, "
                  "the same figure for an oracle map that knows the absolute errors of each voxel's in-plane "
                  "neighbours (Gaussian of 1 voxel) but not the voxel's own (`neighbour_error_spearman`, read from "
                  "the HR: how much of the error can be ranked from its surroundings at all):", "",
                  "| method | volume | Spearman | oracle of the neighbours' errors |", "|---|---|---:|---:|"]
        lines += [f"| {row['method']} | {row['volume']} | {row['uncertainty_spearman']:.3f} | "
                  f"{reference_cell(row.get('neighbour_error_spearman'))} |" for row in spearman]
    own_seconds = sum(parts.seconds(own).values())
    lines += ["", times(parts, used),
              f"Its rows' own parts (training and scoring; the stores and stage I runs shared with the paper's "
              f"table not counted): {own_seconds:.1f} s ({own_seconds / 60:.1f} min)."]
    return "\n".join(lines)


def reference_cell(value) -> str:
    """A row scored before `neighbour_error_spearman` existed has none: '-'."""
    return f"{value:.3f}" if isinstance(value, float) else "-"


def quick_settings(scratch: Path) -> dict:
    return datasets.quick_volumes(scratch, "quality")


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--workdir", default="runs/quality", help="resumable work folder")
    parser.add_argument("--output", default=None, help="metrics.csv (slicesr evaluate format) and figures "
                        "(default WORKDIR/eval)")
    parser.add_argument("--eval-dir", default=None, help="every NIfTI here joins the held-out brains (slice axis 2)")
    parser.add_argument("--plan", default=str(PLAN))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="the tables to run: the paper's (paper) and the rows beyond it (beyond), each its own "
                        "section of RESULTS.md")
    datasets.add_volume_arguments(parser)
    with parse_arguments(parser, argv, quick_settings) as args:
        datasets.check_volume_arguments(parser, args)
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
