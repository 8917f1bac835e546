"""`python -m cluster.pipeline --config configs/pipeline.yaml [--set key=value ...]`: the whole method.

    preprocess   (optionally simulate LR from HR: keep every K-th slice), NIfTI -> Zarr with Dask
    stage1       Ray Train run of the VAE-GAN on the LR store
    synthesis    a synthetic HR volume per LR scan (latent interpolation)
    stage2       Ray Train run of the 3D SR generator on the synthetic HR store
    registration the two models into the MLflow registry (slicesr-vae, slicesr-sr; alias candidate)
    evaluation   held-out HR volumes: linear, cubic, VAE up-sampling, the proposed method; the
                 `champion` alias moves to a candidate that beats the current champion's PSNR

Every step records its outputs in WORKDIR/pipeline_state.json when it is complete and is skipped when
started again; a step cut short resumes (the converter and synthesis skip finished scans, training
resumes from its last Ray checkpoint, registering the same weights again reuses their version). A step
that finished with failed inputs (preprocess, synthesis, evaluation) is recorded with them and runs
again next time, for those inputs only (steps after it that are complete are not redone); a step
where every input failed is not recorded and stops the pipeline.
Exit 0 done, 1 some inputs failed (the rest done), a step had no input left or a training failed (run
it again to resume), 2 usage or environment error (found before any step runs where possible).

Every step runs on the driver's machine or as Ray jobs that read and write under `workdir`: on a
cluster of several machines `workdir` must be a shared filesystem (NFS, a mounted bucket) that
every node sees at the same path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slicesr.cli_common import EXIT_OK, EXIT_SOME_FAILED, CommandFailed, UsageError, run_command
from slicesr.config import Config, apply_override, build_dataclass, load_config

log = logging.getLogger("cluster.pipeline")
STEPS = ("preprocess", "stage1", "synthesis", "stage2", "registration", "evaluation")
BASELINES = ("linear", "cubic")
OWNED_KEYS = ("data.store", "run.storage_path")  # the pipeline places these under workdir


class StepFailed(CommandFailed):
    """Every input of a step failed: nothing to go on with (exit 1; the step is not recorded)."""


@dataclass
class PreprocessStep:
    inputs: list[str] = field(default_factory=list)  # LR NIfTI files, folders or s3:// prefixes
    degrade_k: int | None = None  # simulate LR scans from HR inputs first (keep every K-th slice): demos
    slice_axis: str = "auto"
    workers: int = 2


@dataclass
class TrainStep:
    config: str = ""
    max_steps: int | None = None
    set: list[str] = field(default_factory=list)  # overrides of that stage's config


@dataclass
class EvaluationStep:
    hr: list[str] = field(default_factory=list)  # held-out HR volumes (never used for training)
    slice_axis: str = "auto"
    baselines: list[str] = field(default_factory=lambda: ["linear", "cubic"])
    figures: bool = True
    # The simulated LR slice spacing in mm instead of the pipeline's K (slicesr evaluate --lr-spacing: any
    # multiple of the HR spacing; the stage II model must hold the ratio in its sr.ratio_range), and the
    # slice profile of the simulated LR slices.
    lr_spacing: float | None = None
    slice_profile: str = "point"
    slice_thickness: float | None = None


@dataclass
class PipelineConfig:
    workdir: str = "pipeline_out"
    preprocess: PreprocessStep = field(default_factory=PreprocessStep)
    stage1: TrainStep = field(default_factory=lambda: TrainStep("configs/cpu/stage1.yaml"))
    stage2: TrainStep = field(default_factory=lambda: TrainStep("configs/cpu/stage2.yaml"))
    evaluation: EvaluationStep = field(default_factory=EvaluationStep)
    set: list[str] = field(default_factory=list)  # overrides of both training configs (cluster.*, tracking.*)


def load_pipeline_config(path: str, overrides: list[str] | None = None) -> PipelineConfig:
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror}") from None
    for assignment in overrides or []:
        tree = apply_override(tree, assignment)
    config = build_dataclass(PipelineConfig, tree, "")
    if not config.preprocess.inputs:
        raise ValueError(f"{path}: preprocess.inputs names no LR scans")
    for key, axis in (("preprocess", config.preprocess.slice_axis), ("evaluation", config.evaluation.slice_axis)):
        if axis not in ("auto", "0", "1", "2"):
            raise ValueError(f"{key}.slice_axis must be auto, 0, 1 or 2, got {axis}")
    if not config.evaluation.hr:
        raise ValueError(f"{path}: evaluation.hr names no held-out HR volumes")
    e = config.evaluation
    if e.lr_spacing is not None and not e.lr_spacing > 0:
        raise ValueError(f"evaluation.lr_spacing must be a positive number of mm, got {e.lr_spacing}")
    if e.slice_profile not in ("point", "box", "gaussian"):
        raise ValueError(f"evaluation.slice_profile must be point, box or gaussian, got {e.slice_profile}")
    if e.slice_profile != "point" and not (e.slice_thickness and e.slice_thickness > 0):
        raise ValueError(f"evaluation.slice_profile {e.slice_profile} needs evaluation.slice_thickness > 0 (mm)")
    unknown = [name for name in config.evaluation.baselines if name not in BASELINES]
    if unknown:
        raise ValueError(f"evaluation.baselines: unknown {', '.join(unknown)} (known: {', '.join(BASELINES)})")
    for where, assignments in (("set", config.set), ("stage1.set", config.stage1.set), ("stage2.set", config.stage2.set)):
        owned = [a.partition("=")[0] for a in assignments if a.partition("=")[0].strip() in OWNED_KEYS]
        if owned:
            raise ValueError(f"{where}: {', '.join(owned)} is set by the pipeline (under workdir); change workdir instead")
    return config


def evaluation_key(hr_files: list[str], k: int, slice_axis: str, degradation: tuple = ()) -> str:
    """Names one evaluation (the held-out volumes, by name and size, K and the slice axis, and any LR
    spacing and slice profile): scores are compared only within one."""
    import hashlib

    parts = sorted(f"{Path(f).name}:{os.path.getsize(f)}" for f in hr_files)
    return hashlib.sha256(json.dumps([parts, k, slice_axis, *([list(degradation)] if degradation else [])])
                          .encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, config: PipelineConfig):
        self.config = config
        self.workdir = Path(config.workdir).resolve()
        self.state_path = self.workdir / "pipeline_state.json"
        self.stage1 = self._stage_config(config.stage1, "vae", self.workdir / "lr.zarr")
        self.stage2 = self._stage_config(config.stage2, "sr", self.workdir / "synthetic_hr.zarr")
        self.k = self.stage1.synthesis.k
        if self.stage2.sr.k != self.k:
            raise ValueError(f"stage2 sr.k ({self.stage2.sr.k}) differs from stage1 synthesis.k ({self.k})")
        if config.preprocess.degrade_k not in (None, self.k):
            raise ValueError(f"preprocess.degrade_k ({config.preprocess.degrade_k}) differs from synthesis.k ({self.k})")
        if self.stage2.sr.supervision == "real":
            raise ValueError(f"{config.stage2.config}: the pipeline trains stage II without HR (sr.supervision: "
                             "synthetic, inplane or both); train the supervised upper bound on real HR with "
                             "python -m cluster.train")
        if config.evaluation.lr_spacing is not None and not self.stage2.sr.ratio_range:
            raise ValueError(f"evaluation.lr_spacing {config.evaluation.lr_spacing:g} mm: the stage II model must "
                             "be trained over a range of spacing ratios for it (stage2.set: sr.ratio_range=[low,high])")
        if self.stage2.sr.supervision == "inplane":  # pairs from the LR scans themselves
            self.stage2.data.store = str(self.workdir / "lr.zarr")
        # both: the synthetic volumes' records name lr.zarr, where the in-plane pairs come from
        if self.stage1.run.name == self.stage2.run.name:
            raise ValueError(f"stage1 and stage2 both train run.name {self.stage1.run.name}: give each its own")
        from cluster.tracking import registered_name

        if registered_name(self.stage1) == registered_name(self.stage2):
            raise ValueError(f"stage1 and stage2 both register as {registered_name(self.stage1)} "
                             "(tracking.registered_model): give each its own")
        from slicesr.inference import expand_inputs

        self.hr_files = expand_inputs(config.evaluation.hr)  # a missing or empty folder fails now, not at the end
        missing = [f for f in self.hr_files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"evaluation.hr: no such file {missing[0]}")
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def _stage_config(self, step: TrainStep, stage: str, store: Path) -> Config:
        overrides = [*self.config.set, *step.set, f"data.store={store}",
                     f"run.storage_path={self.workdir / 'runs'}"]
        if step.max_steps is not None:
            overrides.append(f"train.max_steps={step.max_steps}")
        config = load_config(step.config, overrides)
        if config.stage != stage:
            raise ValueError(f"{step.config}: the pipeline's {'stage1' if stage == 'vae' else 'stage2'} needs stage: {stage}")
        if config.tracking.uri.startswith("sqlite:///") and not config.tracking.uri.startswith("sqlite:////"):
            config.tracking.uri = f"sqlite:///{self.workdir / config.tracking.uri[len('sqlite:///'):]}"
        return config

    # ------------------------------------------------------------------ state
    def done(self, step: str) -> bool:
        return step in self.state and not self.state[step].get("failures")

    def record(self, step: str, outputs: dict[str, Any]) -> None:
        self.state[step] = outputs
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.workdir, delete=False, suffix=".tmp") as handle:
            json.dump(self.state, handle, indent=1)
        os.replace(handle.name, self.state_path)  # a kill never leaves a half-written state file

    # ------------------------------------------------------------------ steps
    def preprocess(self) -> dict[str, Any]:
        from preprocessing.degrade import degrade_files
        from preprocessing.to_zarr import convert

        p = self.config.preprocess
        inputs = p.inputs
        failures: list[dict] = []
        if p.degrade_k:
            _, failures = degrade_files(inputs, str(self.workdir / "lr"), p.degrade_k, p.slice_axis)
            inputs = [str(self.workdir / "lr")]
        report = convert(inputs, str(self.workdir / "lr.zarr"), slice_axis=p.slice_axis, workers=p.workers,
                         progress=False)
        failures += report.failures
        stored = len(report.stored) + len(report.skipped)
        if not stored:
            raise StepFailed(f"preprocess: no scan could be converted ({len(failures)} failed; first: "
                             f"{failures[0] if failures else 'no inputs'})")
        return {"store": str(self.workdir / "lr.zarr"), "stored": stored, "failures": failures}

    def train(self, config: Config) -> dict[str, Any]:
        from cluster.train import TrainingFailed, train

        try:
            result = train(config, resume=True, register=False)
        except TrainingFailed as exc:
            raise TrainingFailed(f"{exc} (run the pipeline again to resume)") from None
        return {"run_dir": result.run_dir, "best": result.best_dir, "run_id": result.run_id,
                "step": result.metrics.get("step")}

    def synthesis(self) -> dict[str, Any]:
        from slicesr.modeldir import model_fingerprint
        from slicesr.stage1.synthesis import synthesize_store
        from slicesr.stage1.train import load_vae
        from slicesr.store import SliceStore

        best = self.state["stage1"]["best"]
        model, config, _ = load_vae(best)
        output = SliceStore.create(str(self.workdir / "synthetic_hr.zarr"))
        report = synthesize_store(model, SliceStore.open(str(self.workdir / "lr.zarr")), output, self.k,
                                  batch_size=config.synthesis.batch_size, overlap=config.synthesis.tile_overlap,
                                  keep_acquired=config.synthesis.keep_acquired, model_id=model_fingerprint(best),
                                  progress=False)
        written = len(report.written) + len(report.skipped)
        if not written:
            raise StepFailed(f"synthesis: no synthetic HR volume could be written (first failure: "
                             f"{report.failures[0] if report.failures else 'none'})")
        return {"store": output.url, "written": written, "failures": report.failures}

    def registration(self) -> dict[str, Any]:
        from cluster.tracking import Tracker, registered_name

        registered = {}
        for step, config in (("stage1", self.stage1), ("stage2", self.stage2)):
            if not config.tracking.register:
                continue
            tracker = Tracker(config.tracking.uri, config.tracking.experiment)
            run_id = tracker.find_run(self.state[step]["run_dir"])
            name = registered_name(config)
            registered[step] = {"name": name, "version": tracker.register(run_id, self.state[step]["best"], name),
                                "run_id": run_id}
        return registered

    def _champions_to_rescore(self, eval_key: str) -> dict[str, tuple[str, str]]:
        """Registered name -> (row label, local model directory) of each current champion whose score
        is not on this evaluation: it is scored again beside the candidate, so that the comparison is fair."""
        from cluster.tracking import CHAMPION, EVAL_TAG, Tracker
        from slicesr.modeldir import METADATA
        from slicesr.registry import resolve_model_uri

        rescore = {}
        for step, entry in self.state.get("registration", {}).items():
            config = self.stage1 if step == "stage1" else self.stage2
            tracker = Tracker(config.tracking.uri, config.tracking.experiment)
            current = tracker.alias_version(entry["name"], CHAMPION)
            if current in (None, str(entry["version"])):
                continue
            if tracker.version_tags(entry["name"], current).get(EVAL_TAG) == eval_key:
                continue  # its score is on this evaluation already
            local = resolve_model_uri(f"models:/{entry['name']}/{current}", config.tracking.uri,
                                      self.workdir / "champions" / f"{entry['name']}-v{current}")
            k = json.loads((local / METADATA).read_text()).get("k")
            if step == "stage2" and k != self.k:
                log.warning("%s version %s (the champion) is a K=%s model and this evaluation has K=%s: it cannot "
                            "be compared, and stays the champion", entry["name"], current, k, self.k)
                continue
            rescore[entry["name"]] = (f"{entry['name']} v{current} (champion)", str(local))
        return rescore

    def evaluation(self) -> dict[str, Any]:
        from cluster.tracking import Tracker
        from slicesr.evaluate import evaluate

        e = self.config.evaluation
        degradation = ((e.lr_spacing, e.slice_profile, e.slice_thickness)
                       if e.lr_spacing is not None or e.slice_profile != "point" else ())
        eval_key = evaluation_key(self.hr_files, self.k, e.slice_axis, degradation)
        rescore = self._champions_to_rescore(eval_key)
        models = {"stage1": self.state["stage1"]["best"], "stage2": self.state["stage2"]["best"]}
        result = evaluate(self.hr_files, None if e.lr_spacing is not None else self.k,
                          [*e.baselines, models["stage1"], models["stage2"],
                           *(f"{label}={path}" for label, path in rescore.values())],
                          str(self.workdir / "eval"), e.slice_axis, figures=e.figures, progress=False,
                          lr_spacing=e.lr_spacing, profile=e.slice_profile, thickness_mm=e.slice_thickness)
        if not result.rows:
            raise StepFailed(f"evaluation: no held-out volume could be scored (first failure: {result.failures[:1]})")
        means = {}
        for method in result.methods:
            values = [r["psnr_missing"] for r in result.rows if r["method"] == method]
            means[method] = sum(values) / len(values)
        table = result.summary_table()
        outputs: dict[str, Any] = {"table": table, "psnr_missing": means, "champions": {}, "eval_key": eval_key,
                                   "failures": result.failures}
        labels = dict(zip(("stage1", "stage2"), result.methods[len(e.baselines):]))
        for step, entry in self.state.get("registration", {}).items():
            config = self.stage1 if step == "stage1" else self.stage2
            tracker = Tracker(config.tracking.uri, config.tracking.experiment)
            tracker.log_artifacts(entry["run_id"], self.workdir / "eval", "evaluation")
            champion_label = rescore.get(entry["name"], (None,))[0]
            promoted = tracker.promote(entry["name"], entry["version"], means[labels[step]], eval_key,
                                       champion_score=means.get(champion_label))
            outputs["champions"][entry["name"]] = tracker.alias_version(entry["name"], "champion")
            log.info("%s version %s: PSNR missing %.2f dB, champion %s", entry["name"], entry["version"],
                     means[labels[step]], "(moved)" if promoted else "(kept)")
        return outputs

    def run(self) -> dict[str, Any]:
        from cluster.train import connect_ray, preflight, resolve_paths

        self.workdir.mkdir(parents=True, exist_ok=True)
        actions = {"preprocess": self.preprocess, "stage1": lambda: self.train(self.stage1),
                   "synthesis": self.synthesis, "stage2": lambda: self.train(self.stage2),
                   "registration": self.registration, "evaluation": self.evaluation}
        for step in STEPS:
            if self.done(step):
                log.info("%s: done already, skipped", step)
                continue
            if step in self.state:
                log.info("%s: %d inputs failed last time: running it again", step, len(self.state[step]["failures"]))
            if step in ("stage1", "stage2"):
                config = resolve_paths(self.stage1 if step == "stage1" else self.stage2)
                preflight(config)
                connect_ray(config.cluster.address)
            log.info("%s: running", step)
            self.record(step, actions[step]())
        return self.state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (configs/pipeline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline key, e.g. stage1.max_steps=300 or workdir=/data/out")
    return parser


def _run(args: argparse.Namespace) -> int:
    pipeline = Pipeline(load_pipeline_config(args.config, args.set))
    state = pipeline.run()
    evaluation = state["evaluation"]
    print(evaluation["table"])
    for name, version in evaluation["champions"].items():
        print(f"{name}: champion is version {version}")
    failures = [*state["preprocess"]["failures"], *state["synthesis"]["failures"], *evaluation["failures"]]
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    print(f"-> {pipeline.workdir} (pipeline_state.json, eval/, runs/)")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _run, usage_errors=(FileNotFoundError,), other_errors=False)


if __name__ == "__main__":
    sys.exit(main())
