"""A study: one space of methods × learning rates × seeds, run as one sweep per *setting* (a task order, or another
suite), then gathered into one results.json (kind "study") that `curlora study report` analyses.

    STUDY/<setting>/          an ordinary sweep folder (`curlora sweep report` works on it)
    STUDY/results.json        every run's full bench record (accuracy matrices, validation accuracies, predictions,
                              perplexities, KL), the suites' task facts and the design (read by reports/continual.py)

The design is a TOML file (configs/studies/): [study] (title, reference, comparisons, notes), [space] (as a sweep's:
methods, lrs, seeds, ...), [bench] (shared bench options) and one [[setting]] table per setting (name, group, title,
and bench overrides such as task_order or suite). Everything is checked before anything runs.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from curlora.data import load_suite, select_tasks
from curlora.errors import CurloraError
from curlora.files import atomic_write_json
from curlora.methods import spec_family
from curlora.recipes.sweep.runner import Options, SweepReporter, finished_record, read_bench, run_sweep, sanitize
from curlora.recipes.sweep.space import SPACE_KEYS, Space, _toml_load, make_space
from curlora.reports.continual import RESULTS_FILE  # the study's results.json: its reader owns the contract

SCHEMA_VERSION = 1
_STUDY_KEYS = {"title", "reference", "comparisons", "notes", "settings_compared"}
_SETTING_KEYS = {"name", "group", "title"}


def load_design(path: str | Path, data_dir: str | None = None) -> dict:
    """The design file, checked: every setting's space parses (methods, options, task names are checked when the
    sweep starts), comparisons name listed families, setting names are unique folder names."""
    path = Path(path)
    data = _toml_load(path)
    unknown = set(data) - {"study", "space", "bench", "setting"}
    if unknown:
        raise CurloraError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; use [study], [space], [bench], "
                           "[[setting]]")
    study = dict(data.get("study", {}))
    bad = set(study) - _STUDY_KEYS
    if bad:
        raise CurloraError(f"{path}: unknown key(s) in [study]: {', '.join(sorted(bad))}; use "
                           f"{', '.join(sorted(_STUDY_KEYS))}")
    space = dict(data.get("space", {}))
    bad = set(space) - set(SPACE_KEYS)
    if bad:
        raise CurloraError(f"{path}: unknown key(s) in [space]: {', '.join(sorted(bad))}; use {', '.join(SPACE_KEYS)}")
    settings = data.get("setting") or []
    if not settings:
        raise CurloraError(f"{path} has no [[setting]] table; give at least one (name, group, task_order)")
    names = [s.get("name") for s in settings]
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise CurloraError(f"{path}: setting name {name!r} must be lowercase letters, digits, '-' or '_'")
    if len(set(names)) != len(names):
        raise CurloraError(f"{path}: a setting name is used twice ({names}); give each setting its own name")
    design = {
        "title": study.get("title", path.stem),
        "notes": list(study.get("notes", [])),
        "reference": study.get("reference", "probe"),
        "comparisons": [list(c) for c in study.get("comparisons", [])],
        # pairs of settings compared family by family, at every lr, paired by seed (e.g. a 4-bit base vs bf16)
        "settings_compared": [list(c) for c in study.get("settings_compared", [])],
        "space": space,
        "bench": dict(data.get("bench", {})),
        "settings": [dict(s) for s in settings],
        "file": path.name,
    }
    families = set()
    for setting in design["settings"]:
        families |= {spec_family(c.spec) for c in setting_space(design, setting, data_dir).configurations()}
    for pair in design["settings_compared"]:
        missing = [n for n in pair if n not in names]
        if len(pair) != 2 or missing:
            raise CurloraError(f"{path}: settings_compared pairs must name two settings of the design ({pair}); "
                               f"the design has {', '.join(names)}")
    for pair in [*design["comparisons"], [design["reference"]]]:
        missing = [f for f in pair if f not in families]
        if missing:
            raise CurloraError(f"{path}: {', '.join(missing)} is not a method family of the space "
                               f"({', '.join(sorted(families))}); fix [study] reference/comparisons")
    return design


def setting_space(design: dict, setting: dict, data_dir: str | None = None) -> Space:
    """The sweep space of one setting: the shared space, the shared bench options and the setting's overrides."""
    bench = dict(design["bench"]) | {k: v for k, v in setting.items() if k not in _SETTING_KEYS}
    if data_dir is not None:
        bench["data_dir"] = str(data_dir)
    space = dict(design["space"])
    return make_space(space.pop("methods", None), bench=bench, **space)


def run_study(design: dict, out: str | Path, options: Options, *, data_dir: str | None = None,
              only: list[str] | None = None, reporter: SweepReporter | None = None) -> dict:
    """Run (or resume) every setting's sweep in turn, then write STUDY/results.json from what the folders hold.
    `only`: run these settings (the others are still collected)."""
    out = Path(out)
    names = [s["name"] for s in design["settings"]]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise CurloraError(f"unknown setting(s) {', '.join(unknown)}; the design has {', '.join(names)}")
    spaces = {s["name"]: setting_space(design, s, data_dir) for s in design["settings"]}  # all checked first
    for space in spaces.values():  # task names and data files too, before the first run of the first setting
        base = space.base_config()
        if options.loader is None:
            load_suite(base.suite, base.data_dir, order=base.task_order)
        else:
            select_tasks(options.loader(base)[2], base.task_order)
    for name, space in spaces.items():
        if only is None or name in only:
            run_sweep(space, out / name, Options(**{**vars(options), "extra": dict(options.extra)}), reporter)
    return collect_study(design, out, data_dir=data_dir)


def _commit() -> str | None:
    """The commit of the code that ran: CURLORA_COMMIT (set where the tree is a copy without .git), else git's."""
    if os.environ.get("CURLORA_COMMIT"):
        return os.environ["CURLORA_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def collect_study(design: dict, out: str | Path, *, data_dir: str | None = None) -> dict:
    """STUDY/results.json from the settings' run folders (finished runs only). Written atomically; returned."""
    out = Path(out)
    settings = []
    for setting in design["settings"]:
        space = setting_space(design, setting, data_dir)
        folder = out / setting["name"]
        runs, suite, environment = [], None, None
        for conf in space.configurations():
            for seed in space.seeds:
                bench = read_bench(folder, conf, seed)
                record = None if bench is None else finished_record(bench, conf)
                if record is None:
                    continue
                if suite is None:  # every run of a setting sees the same suite (its config is in the folder)
                    suite, environment = bench["suite"], bench.get("environment")
                runs.append({"label": conf.label, "family": spec_family(conf.spec), **_run_fields(record)})
        config = space.base_config().result_key()
        config.pop("data_dir", None)  # a path on the machine that ran it
        settings.append({
            "name": setting["name"],
            "group": setting.get("group", setting["name"]),
            "title": setting.get("title", setting["name"]),
            "order": suite["tasks"] if suite else None,
            "bench": config | {"methods": None},
            "suite": suite,
            "environment": environment,
            "n_runs_expected": len(space.configurations()) * len(space.seeds),
            "runs": runs,
        })
    space = dict(design["space"])
    results = sanitize({
        "schema_version": SCHEMA_VERSION,
        "kind": "study",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "design": {
            "title": design["title"],
            "file": design["file"],
            "notes": design["notes"],
            "seeds": space.get("seeds"),
            "lrs": space.get("lrs"),
            "methods": space.get("methods"),
            "head_lr": design["bench"].get("head_lr"),
            "reference": design["reference"],
            "comparisons": design["comparisons"],
            "settings_compared": design["settings_compared"],
            "settings": [{k: s.get(k) for k in ("name", "group", "title")} | {"order": s.get("task_order")}
                         for s in design["settings"]],
            "bench": {k: v for k, v in design["bench"].items() if k != "data_dir"},
        },
        "settings": settings,
    })
    atomic_write_json(out / RESULTS_FILE, results)
    return results


_RUN_FIELDS = ("method", "rank", "lr", "head_lr", "seed", "acc", "val_acc", "pred", "ppl_before", "ppl_after",
               "diverged", "delta_norm_ratio", "kl", "trainable_params", "head_params", "adapter_bytes", "wall_s",
               "probe")


def _run_fields(record: dict) -> dict:
    out = {k: record.get(k) for k in _RUN_FIELDS if k in record or k in ("val_acc", "kl", "pred")}
    # a run whose perplexity or weights are not finite is diverged, whatever an older record says
    out["diverged"] = bool(record.get("diverged")) or record.get("ppl_after") is None
    return out


def merge_studies(parts: list[dict]) -> dict:
    """One study from several results files whose settings share names and bench settings (e.g. a follow-up run of
    more methods on the same settings). Runs are united; a (setting, label, seed) in two files is kept once, from the
    first file, and the largest difference between the copies' final accuracies is recorded (a reproducibility
    check). Settings whose bench configurations differ are refused, naming the fields."""
    if len(parts) < 2:
        raise CurloraError("give at least two study results files to merge")
    for k, part in enumerate(parts):
        if part.get("kind") != "study":
            raise CurloraError(f"file {k + 1} is not a study results file (kind {part.get('kind')!r}); give the "
                               "results.json that `curlora study run` or `collect` wrote")
    first = parts[0]
    settings: dict[str, dict] = {}
    duplicates: dict[str, dict] = {}
    for part in parts:
        for s in part["settings"]:
            mine = settings.get(s["name"])
            if mine is None:
                settings[s["name"]] = {**s, "runs": list(s["runs"])}
                continue
            diff = sorted(k for k in set(mine["bench"]) | set(s["bench"]) if mine["bench"].get(k) != s["bench"].get(k))
            if diff or mine["order"] != s["order"]:
                raise CurloraError(f"setting {s['name']!r} ran with other bench settings in another file (differs in: "
                                   f"{', '.join(diff or ['task order'])}); merge only studies of the same settings")
            have = {(r["label"], r["seed"]): r for r in mine["runs"]}
            for run in s["runs"]:
                twin = have.get((run["label"], run["seed"]))
                if twin is None:
                    mine["runs"].append(run)
                    continue
                d = duplicates.setdefault(run["label"], {"runs": 0, "max_final_acc_diff": 0.0})
                d["runs"] += 1
                d["max_final_acc_diff"] = max(d["max_final_acc_diff"], max(
                    abs(a - b) for a, b in zip(twin["acc"][-1], run["acc"][-1], strict=True)))
            mine["n_runs_expected"] = mine["n_runs_expected"] + s["n_runs_expected"]
    design = dict(first["design"])
    for part in parts[1:]:
        d = part["design"]
        for key in ("methods", "lrs", "comparisons", "notes", "settings_compared"):
            have = list(design.get(key) or [])
            design[key] = have + [x for x in d.get(key) or [] if x not in have]
        design["file"] = f"{design['file']} + {d['file']}"
    return sanitize({
        **first,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": ", ".join(dict.fromkeys(str(p.get("commit")) for p in parts)),
        "design": design,
        "merged_from": [{"file": p["design"]["file"], "commit": p.get("commit"), "created": p.get("created")}
                        for p in parts],
        "duplicates": duplicates,
        "settings": list(settings.values()),
    })
