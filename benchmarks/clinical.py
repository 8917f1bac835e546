"""Clinical spacing: one model for every spacing ratio, and thick slices, on the real volumes.

    python benchmarks/clinical.py [--workdir runs/clinical] [--plan benchmarks/clinical.yaml]
    python benchmarks/clinical.py --quick

Ratios: one stage II model trained once over `ratio_range` (sr.ratio_range) and models trained for one
ratio alone (`fixed`: their LR training scans decimated by that ratio; `alone_on_range_scans`: the range
model's own scans with a range of one value, sr.ratio_range [r, r]), the same steps each, all without
HR (the plan's supervision: in-plane pairs of the LR training scans); `range_variants`: the one model
trained otherwise (`steps`: longer; `init_from_fixed: r`: starting from the ratio-r model, sr.init_from;
`set`: settings of its own, e.g. sr.ratio_integer_share), each its own column; `ratio_set`: settings of every
model of the ratio table (after `set`; the thickness table's models do not take them); `alone_set`: the
`alone_on_range_scans` models' own settings after those. Each is scored with `slicesr
evaluate --lr-spacing` at every ratio of `ratios` on each held-out brain (LR slices at i x ratio HR
slices; non-integer ratios included), beside linear and cubic.
Thickness (at K = `thickness.k`): the LR scans simulated with each slice profile (box of n HR slices: a
gap when n < K; Gaussian of FWHM n); linear, cubic, the model trained for point sampling and the model
trained for that profile (sr.slice_profile), on each held-out brain and on the DESS knee (trained on its
own LR scan). Seeds (`seed_study`): the one model and the single-ratio models trained again with other
seeds, their gaps per seed at a few ratios (the plan's seed shares the ratio table's models). `--parts
ratios`, `--parts seeds` or `--parts thickness` runs one of the three tables (each is its own section of
RESULTS.md, the others left as they are). Started again with the same --workdir, finished parts are
skipped (benchmarks/quality.py's bookkeeping); `--quick`: the plan's quick section on phantoms.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.quality import Parts, absolute_workdir, digest, make_lr_store, settings_list, train_sr  # noqa: E402
from benchmarks.results import benchmark_parser, parse_arguments, publish  # noqa: E402
from slicesr.cli_common import setup_logging  # noqa: E402

PLAN = HERE / "clinical.yaml"
LINEAR, CUBIC = "linear", "cubic"
PARTS = ("ratios", "thickness", "seeds")


def load_plan(path: Path, quick: bool) -> dict:
    plan = yaml.safe_load(path.read_text())
    quick_part = plan.pop("quick", {})
    if quick:
        plan.update(quick_part)
    return plan


def score(volumes: list[str], methods: list[str], output: Path, axis: int, lr_spacing: float | None, k: int | None,
          profile: str, thickness_lines: float) -> list[dict]:
    """`slicesr evaluate` with a simulated LR spacing or K and a slice profile; the thickness is given in
    HR slices and converted with each volume's HR spacing (one call per volume)."""
    from slicesr.evaluate import evaluate
    from slicesr.geometry import resolve_slice_axis, voxel_spacing
    from slicesr.nifti import load_volume

    rows = []
    for volume in volumes:
        image = load_volume(volume)
        hr_spacing = float(voxel_spacing(image.affine)[resolve_slice_axis(image.affine, axis)])
        result = evaluate([volume], k, methods, str(output / Path(volume).name.split(".")[0]), slice_axis=str(axis),
                          figures=False, progress=False,
                          lr_spacing=None if lr_spacing is None else lr_spacing * hr_spacing, profile=profile,
                          thickness_mm=thickness_lines * hr_spacing if profile != "point" else None)
        if result.failures:
            raise RuntimeError(f"evaluation in {output}: {result.failures}")
        rows += result.rows
    return rows


def run(args) -> int:
    setup_logging()
    plan = load_plan(Path(args.plan), args.quick)
    if "seeds" in args.parts and plan.get("seed_study"):
        seed_study_variant(plan)  # a plan mistake is refused before anything is written or trained
    workdir = absolute_workdir(args)
    workdir.mkdir(parents=True, exist_ok=True)
    runs, parts = workdir / "runs", Parts(workdir)
    settings = ratio_settings(plan)
    seed, supervision = plan["seed"], plan["supervision"]

    def lr_store(factor: int, inputs: list[str], name: str, slice_axis: int) -> str:
        return parts.run(f"{name} LR store (1 slice of every {factor})", make_lr_store, inputs, workdir,
                         f"{name}_k{factor}", factor, slice_axis)

    def model(name: str, store: str, k: int, *extra: str, seed: int = seed) -> str:
        name = seeded(name, plan, seed)
        return parts.run(name, train_sr, plan["sr_config"], settings, seed, k, store, supervision, runs,
                         name.replace(" ", "-").replace(",", ""), *extra)

    # each table lists every part it used, also those that the other table ran first
    if "ratios" in args.parts:
        parts.used = []
        rows, used = ratio_part(args, plan, parts, lr_store, model, runs)
        publish(args, "clinical", "Clinical spacing: one model for every ratio", ratio_table(args, plan, parts, rows, used))
    if "seeds" in args.parts and plan.get("seed_study"):
        parts.used = []
        rows, used = seed_part(args, plan, parts, lr_store, model, runs)
        publish(args, "clinical-seeds", "Clinical spacing: the ratio gap over training seeds",
                seed_table(args, plan, parts, rows, used))
    if "thickness" in args.parts:
        parts.used = []
        rows = thickness_part(args, plan, parts, lr_store, runs)
        publish(args, "clinical-thickness", "Clinical spacing: thick slices and gaps",
                thickness_table(args, plan, parts, rows, list(parts.used)))
    return 0


def ratio_settings(plan: dict) -> dict:
    """The ratio table's models: the plan's `set`, then `ratio_set` (settings for these models alone, so that
    the thickness table's models keep theirs)."""
    extra = settings_list(plan.get("ratio_set", []), "the clinical plan's `ratio_set`")
    return {"steps": plan["steps"], "set": [*plan["set"], *extra]}


def ratio_part(args, plan: dict, parts: Parts, lr_store, model, runs: Path) -> tuple[list[dict], list[str]]:
    """The ratio table's rows and the parts it used."""
    workdir, axis = Path(args.workdir), args.brain_axis
    seed = plan["seed"]
    # one model over the ratio range, and models for one ratio each
    low, high = plan["ratio_range"]
    range_k = plan.get("range_k", 4)
    range_model = model(f"ratios {low:g} to {high:g}", lr_store(range_k, args.brain_train, "brain", axis), range_k,
                        f"sr.ratio_range=[{low}, {high}]")
    fixed = {r: model(f"ratio {r}", lr_store(r, args.brain_train, "brain", axis), r) for r in plan["fixed"]}
    # one ratio alone on the range model's own scans (a range of one value): the same data as the range model
    # `alone_set`: their own settings after the table's (a ratio-2 model learned nothing at the range's rate)
    alone_set = settings_list(plan.get("alone_set", []), "the clinical plan's `alone_set`")
    alone = {r: model(f"ratio {r} on the range scans", lr_store(range_k, args.brain_train, "brain", axis), range_k,
                      f"sr.ratio_range=[{r}, {r}]", *alone_set) for r in plan.get("alone_on_range_scans", [])}
    # the one model trained otherwise: longer (compute-matched), or starting from a single-ratio model
    variants = {variant["name"]: range_variant(args, plan, parts, lr_store, runs, variant, fixed, seed)
                for variant in plan.get("range_variants", [])}
    ratio_rows = []
    for ratio in plan["ratios"]:
        methods = [LINEAR, CUBIC, f"one model for {low:g}-{high:g}={range_model}"]
        if ratio in fixed:
            methods.append(f"trained for ratio {ratio:g}={fixed[ratio]}")
        if ratio in alone:
            methods.append(f"ratio {ratio:g} alone, range scans={alone[ratio]}")
        ratio_rows += parts.run(f"score ratio {ratio}", score, args.brain_eval, methods,
                                workdir / "eval" / f"ratio{ratio}", axis, float(ratio), None, "point", 0.0)
        for name, trained in variants.items():  # each its own part: the rows above are not scored again
            ratio_rows += parts.run(f"score ratio {ratio}, {name}", score, args.brain_eval,
                                    [f"one model for {low:g}-{high:g}, {name}={trained}"],
                                    workdir / "eval" / f"ratio{ratio}-{slug(name)}", axis, float(ratio), None,
                                    "point", 0.0)
    return ratio_rows, list(parts.used)


def seeded(name: str, plan: dict, seed: int) -> str:
    """A part's name for `seed`: another seed is another model (its own part and run folder); the plan's seed
    keeps the names of before, so that the ratio table and the seed study share its models."""
    return name if seed == plan["seed"] else f"{name}, seed {seed}"


def range_variant(args, plan: dict, parts: Parts, lr_store, runs: Path, variant: dict, fixed: dict, seed: int) -> str:
    """The one model trained otherwise (`range_variants`), with `seed`: its model directory."""
    low, high = plan["ratio_range"]
    range_k = plan.get("range_k", 4)
    extra = [f"sr.ratio_range=[{low}, {high}]"]
    if "init_from_fixed" in variant:
        extra.append(f"sr.init_from={fixed[variant['init_from_fixed']]}")
    extra += variant.get("set", [])  # its own settings, e.g. sr.ratio_integer_share
    name = seeded(f"ratios {low:g} to {high:g}, {variant['name']}", plan, seed)
    folder = seeded(f"ratios-{low:g}-to-{high:g}-{slug(variant['name'])}", plan, seed).replace(", seed ", "-seed-")
    return parts.run(name, train_sr, plan["sr_config"], {**ratio_settings(plan), "steps": variant.get("steps", plan["steps"])},
                     seed, range_k, lr_store(range_k, args.brain_train, "brain", args.brain_axis),
                     plan["supervision"], runs, folder, *extra)


def seed_part(args, plan: dict, parts: Parts, lr_store, model, runs: Path) -> tuple[list[dict], list[str]]:
    """The one model (`seed_study.variant`: a range variant's name, or none for the plain one) and the
    single-ratio models of `seed_study.ratios` (`fixed`, `alone_on_range_scans`), trained once per seed of
    `seed_study.seeds`, scored on each held-out brain at those ratios. The plan's own seed gives the ratio
    table's models (the same parts: not trained twice); a row of the result is tagged with its seed."""
    study = plan["seed_study"]
    low, high = plan["ratio_range"]
    range_k, axis = plan.get("range_k", 4), args.brain_axis
    alone_set = settings_list(plan.get("alone_set", []), "the clinical plan's `alone_set`")
    variant = seed_study_variant(plan)
    rows = []
    for seed in study["seeds"]:
        range_store = lr_store(range_k, args.brain_train, "brain", axis)
        fixed = {r: model(f"ratio {r}", lr_store(r, args.brain_train, "brain", axis), r, seed=seed)
                 for r in plan["fixed"] if r in study["ratios"] or (variant or {}).get("init_from_fixed") == r}
        alone = {r: model(f"ratio {r} on the range scans", range_store, range_k, f"sr.ratio_range=[{r}, {r}]",
                          *alone_set, seed=seed)
                 for r in plan.get("alone_on_range_scans", []) if r in study["ratios"]}
        one = (range_variant(args, plan, parts, lr_store, runs, variant, fixed, seed) if variant else
               model(f"ratios {low:g} to {high:g}", range_store, range_k, f"sr.ratio_range=[{low}, {high}]", seed=seed))
        for ratio in study["ratios"]:
            methods = [LINEAR, f"{ONE_MODEL}={one}"]
            methods += [f"{SINGLE}, {scans}={trained[ratio]}" for scans, trained in (("its scans", fixed),
                                                                                    ("range scans", alone))
                        if ratio in trained]
            scored = parts.run(f"score ratio {ratio}, seed {seed}", score, args.brain_eval, methods,
                               Path(args.workdir) / "eval" / f"seeds-ratio{ratio}-seed{seed}", axis, float(ratio),
                               None, "point", 0.0)
            rows += [{**row, "seed": seed} for row in scored]
    return rows, list(parts.used)


def seed_study_variant(plan: dict) -> dict | None:
    """The range variant `seed_study` names (None: the plain one model); a study that names an unknown variant, or
    a ratio without a single-ratio model to compare with, is refused (`run` checks it before any part)."""
    study = plan["seed_study"]
    variant = next((v for v in plan.get("range_variants", []) if v["name"] == study.get("variant")), None)
    if study.get("variant") and variant is None:
        raise ValueError(f"seed_study.variant {study['variant']!r} is none of the plan's range_variants")
    unmatched = [r for r in study["ratios"] if r not in plan["fixed"] and r not in plan.get("alone_on_range_scans", [])]
    if unmatched:
        raise ValueError(f"seed_study.ratios {unmatched}: no single-ratio model to compare with (add them to `fixed` "
                         "or `alone_on_range_scans`)")
    return variant


ONE_MODEL, SINGLE = "one model", "single ratio"


def seed_gaps(rows: list[dict]) -> dict[tuple[float, str], dict[int, tuple[float, float, float]]]:
    """{(ratio, volume): {seed: (linear, one model, best single-ratio model)}} of `seed_part`'s rows."""
    cells: dict = {}
    for row in rows:
        cells.setdefault((float(row["ratio"]), row["volume"]), {}).setdefault(row["seed"], {}).setdefault(
            row["method"], []).append(row["psnr_missing"])
    return {key: {seed: (scores[LINEAR][0], scores[ONE_MODEL][0],
                         max(v for method, values in scores.items() if method.startswith(SINGLE) for v in values))
                  for seed, scores in by_seed.items()} for key, by_seed in cells.items()}


def seed_table(args, plan: dict, parts: Parts, rows: list[dict], used: list[str]) -> str:
    study = plan["seed_study"]
    low, high = plan["ratio_range"]
    seeds = " / ".join(str(s) for s in study["seeds"])
    lines = header(args, plan, plan["steps"], brackets=False) + [
        f"The one model over ratios {low:g} to {high:g}" + (f" ({study['variant']})" if study.get("variant") else "")
        + " and the single-ratio models of the ratio table (the best of `fixed` and `alone_on_range_scans` at each "
        f"ratio), each trained once per seed (train.seed {seeds}: the initial weights, the training / hold-out split "
        f"of the training brains and the pairs drawn); seed {plan['seed']} is the ratio table's. Gain over linear "
        "per seed; gap = the one model minus the single-ratio model of the same seed.", "",
        f"| ratio | volume | linear | one model, gain (seed {seeds}) | single ratio, gain | gap | mean gap |",
        "|---:|---|---:|---:|---:|---:|---:|"]
    for (ratio, volume), by_seed in sorted(seed_gaps(rows).items()):
        ordered = [by_seed[s] for s in study["seeds"] if s in by_seed]
        gaps = [one - single for _, one, single in ordered]
        lines.append(f"| {ratio:g} | {volume} | {ordered[0][0]:.2f} | "
                     + " / ".join(f"{one - base:+.2f}" for base, one, _ in ordered) + " | "
                     + " / ".join(f"{single - base:+.2f}" for base, _, single in ordered) + " | "
                     + " / ".join(f"{gap:+.2f}" for gap in gaps) + f" | {sum(gaps) / len(gaps):+.2f} |")
    lines += ["", times(parts, used)]
    return "\n".join(lines)


def thickness_part(args, plan: dict, parts: Parts, lr_store, runs: Path) -> list[dict]:
    """Thick slices at K: the model for point sampling vs the model for that profile, on each set."""
    workdir, seed, supervision, axis = Path(args.workdir), plan["seed"], plan["supervision"], args.brain_axis
    k = plan["thickness"]["k"]
    thickness_settings = {"steps": plan["thickness"].get("steps", plan["steps"]), "set": plan["set"]}

    def thickness_model(name: str, store: str, *extra: str) -> str:
        return parts.run(name, train_sr, plan["sr_config"], thickness_settings, seed, k, store, supervision, runs,
                         name.replace(" ", "-").replace(",", ""), *extra)

    thickness_rows = []
    sets = [("brain", args.brain_train, args.brain_eval, axis), ("knee", [args.knee], [args.knee], args.knee_axis)]
    sets = [entry for entry in sets if entry[0] in plan["thickness"].get("sets", ("brain", "knee"))]
    for name, train, held_out, slice_axis in sets:
        store = lr_store(k, train, name, slice_axis)
        # the knee has one scan: no validation scan; thick profiles are validated on in-plane pairs degraded
        # with the same profile (the LR hold-out needs the point profile: slicesr.config)
        val = ["train.val_fraction=0"] if name == "knee" else []
        point = thickness_model(f"{name} point K{k}, {thickness_settings['steps']} steps", store, *val)
        thickness_rows += parts.run(f"score {name} point", score, held_out, [LINEAR, CUBIC, f"slicesr, point={point}"],
                                    workdir / "eval" / f"{name}-point", slice_axis, None, k, "point", 0.0)
        hr_mm = slice_spacing(store) / k  # the training scans' HR spacing: the thickness in mm follows it
        for profile, lines in plan["thickness"]["profiles"]:
            trained = thickness_model(f"{name} {profile} {lines} K{k}", store, *val, f"sr.slice_profile={profile}",
                                      f"sr.slice_thickness={lines * hr_mm}", "sr.validation=patches")
            thickness_rows += parts.run(f"score {name} {profile} {lines}", score, held_out,
                                        [LINEAR, CUBIC, f"slicesr, point={point}", f"slicesr, {profile}={trained}"],
                                        workdir / "eval" / f"{name}-{profile}{lines}", slice_axis, None, k, profile,
                                        float(lines))
    return thickness_rows


def slug(name: str) -> str:
    """A folder name from a label: '3000 steps' -> '3000-steps'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def slice_spacing(store: str) -> float:
    """The slice spacing (mm) of a store's first scan."""
    from slicesr.store import SliceStore

    return float(next(iter(SliceStore.open(store).records().values())).spacing_mm[0])


def header(args, plan: dict, steps: int, brackets: bool = True) -> list[str]:
    return [f"Command: `python benchmarks/clinical.py{' --quick' if args.quick else ''}{parts_flag(args)}`  ",
            f"Plan {Path(args.plan).name} ({digest(Path(args.plan).read_text())}), supervision {plan['supervision']}, "
            f"{steps} steps per model. PSNR (dB) on the missing HR slices (more than half a slice from an "
            "acquired centre)" + ("; gain over linear in brackets." if brackets else "."), ""]


def parts_flag(args) -> str:
    return "" if set(args.parts) == set(PARTS) else f" --parts {' '.join(args.parts)}"


def times(parts: Parts, used: list[str]) -> str:
    return "Time per part (seconds): " + ", ".join(f"{n} {s:.0f}" for n, s in parts.seconds(used).items()) + "."


def ratio_table(args, plan: dict, parts: Parts, ratio_rows: list[dict], used: list[str]) -> str:
    volumes = list(dict.fromkeys(row["volume"] for row in ratio_rows))
    low, high = plan["ratio_range"]
    lines = header(args, plan, plan["steps"]) + [
             f"Columns: one model over ratios {low:g} to {high:g} (trained on the LR scans at {plan.get('range_k', 4)} x the HR "
             "spacing); a model trained for that ratio on scans decimated by it (`fixed`); a model trained for that "
             "ratio alone on the range model's scans (`sr.ratio_range: [r, r]`, `alone_on_range_scans`); gap = the "
             "one model minus the best single-ratio model."]
    if plan.get("ratio_set"):
        lines[-1] += f" Every model of this table trains with {', '.join(plan['ratio_set'])} (`ratio_set`)"
        lines[-1] += (f", the models of one ratio alone on the range scans then with {', '.join(plan['alone_set'])} "
                      "(`alone_set`)." if plan.get("alone_set") else ".")
    variants = plan.get("range_variants", [])
    for variant in variants:
        lines[-1] += f" `{variant['name']}`: the one model again, {variant['why']}."
    if variants:
        lines[-1] += " Gap columns: each one-model column minus the best single-ratio model."
    lines += ["", "| ratio | volume | linear | cubic | one model " + f"{low:g}-{high:g} | trained for that ratio (its "
              "scans) | that ratio alone (range scans) | gap |" + "".join(f" one model, {v['name']} | gap |"
                                                                     for v in variants),
              "|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(variants)]
    by = {(r["ratio"], r["volume"], r["method"]): r["psnr_missing"] for r in ratio_rows}
    for ratio in plan["ratios"]:
        for volume in volumes:
            base = by.get((float(ratio), volume, LINEAR))
            one = by.get((float(ratio), volume, f"one model for {low:g}-{high:g}"))
            own = by.get((float(ratio), volume, f"trained for ratio {ratio:g}"))
            alone = by.get((float(ratio), volume, f"ratio {ratio:g} alone, range scans"))
            single = max((v for v in (own, alone) if v is not None), default=None)
            cells = [f"{by.get((float(ratio), volume, CUBIC), float('nan')):.2f}",
                     *(f"{v:.2f} ({v - base:+.2f})" if v is not None else "-" for v in (one, own, alone)),
                     f"{one - single:+.2f}" if one is not None and single is not None else "-"]
            for variant in variants:
                other = by.get((float(ratio), volume, f"one model for {low:g}-{high:g}, {variant['name']}"))
                cells += [f"{other:.2f} ({other - base:+.2f})" if other is not None else "-",
                          f"{other - single:+.2f}" if other is not None and single is not None else "-"]
            lines.append(f"| {ratio:g} | {volume} | {base:.2f} | " + " | ".join(cells) + " |")
    lines += ["", times(parts, used)]
    return "\n".join(lines)


def thickness_table(args, plan: dict, parts: Parts, thickness_rows: list[dict], used: list[str]) -> str:
    steps = plan["thickness"].get("steps", plan["steps"])
    lines = header(args, plan, steps) + [
              f"Thick slices at K = {plan['thickness']['k']} (the LR scans simulated from the HR volume with that "
              "profile; profile: its thickness in mm):", "",
              "| profile | volume | linear | cubic | slicesr trained for point | slicesr trained for the profile |",
              "|---|---|---:|---:|---:|---:|"]
    for row_set in _group(thickness_rows):
        profile, volume, values = row_set
        base = values.get(LINEAR)
        trained = next((v for m, v in values.items() if m.startswith("slicesr, ") and m != "slicesr, point"), None)
        cells = [f"{values.get(CUBIC, float('nan')):.2f}", f"{values['slicesr, point']:.2f} "
                 f"({values['slicesr, point'] - base:+.2f})", f"{trained:.2f} ({trained - base:+.2f})" if trained else "-"]
        lines.append(f"| {profile} | {volume} | {base:.2f} | " + " | ".join(cells) + " |")
    lines += ["", times(parts, used)]
    return "\n".join(lines)


def _group(rows: list[dict]) -> list[tuple[str, str, dict]]:
    groups: dict[tuple[str, str], dict] = {}
    for row in rows:
        label = row["profile"] if row["profile"] == "point" else f"{row['profile']} {row['thickness_mm']:g} mm"
        groups.setdefault((label, row["volume"]), {})[row["method"]] = row["psnr_missing"]
    return [(label, volume, values) for (label, volume), values in groups.items()]


def quick_settings(scratch: Path) -> dict:
    return datasets.quick_volumes(scratch, "clinical")


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--workdir", default="runs/clinical", help="resumable work folder")
    parser.add_argument("--plan", default=str(PLAN))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="the tables to run (each its own section of RESULTS.md)")
    datasets.add_volume_arguments(parser)
    with parse_arguments(parser, argv, quick_settings) as args:
        datasets.check_volume_arguments(parser, args)
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
