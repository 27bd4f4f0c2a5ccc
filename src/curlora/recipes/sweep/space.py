"""A sweep's search space: method specs × ranks × learning rates (× α, sampling, epochs) × seeds, plus the bench
options every point shares. Each configuration is one bench method spec; every (configuration, seed) is one run.

Method names are whatever the bench's `parse_method` accepts: a name without a rank that needs one is crossed with
the ranks; a spec with its own rank or options keeps them (its options win over the space's axes).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from curlora.errors import CurloraError
from curlora.methods import MethodSpec, parse_method
from curlora.recipes.bench import BenchConfig, make_config

REFERENCE = "head_only"  # learning is measured against this method, on the same seeds
SPACE_KEYS = ("methods", "ranks", "lrs", "alphas", "samplings", "epochs", "seeds")
# bench fields the space itself owns (one value per configuration), so they cannot be set for the whole sweep
_OWNED = {"methods", "seeds", "lr", "alpha", "sampling", "epochs", "device"}
_BENCH_FIELDS = {f.name for f in dataclasses.fields(BenchConfig)} - _OWNED


@dataclass(frozen=True)
class Configuration:
    """One point of the space: a bench method spec (with its lr) and the epochs; runs once per seed."""

    label: str  # spec, plus " epochs=N" when the space varies epochs
    spec: str
    method: str
    rank: int | None
    lr: float
    alpha: float | None
    sampling: str | None
    epochs: int
    reference: bool = False  # the head_only run learning is measured against

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Space:
    methods: list[str]
    ranks: list[int] | None = None
    lrs: list[float] | None = None
    alphas: list[float] | None = None
    samplings: list[str] | None = None
    epochs: list[int] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    bench: dict = field(default_factory=dict)  # preset, model, suite, data_dir, n_train, warmup_steps, ...

    def record(self) -> dict:
        """What sweep.json stores: a rerun must match it exactly (results are never mixed across spaces)."""
        return {k: getattr(self, k) for k in SPACE_KEYS} | {"bench": dict(sorted(self.bench.items()))}

    def base_config(self) -> BenchConfig:
        """The bench settings shared by every point (methods/seeds filled in per run)."""
        preset = self.bench.get("preset", "quick")
        extra = {k: v for k, v in self.bench.items() if k != "preset"}
        if "warmup_steps" in extra and "warmup_ratio" not in extra:
            extra["warmup_ratio"] = 0.0  # as `curlora bench --warmup-steps`: the steps are the warm-up
        return make_config(preset, methods=[REFERENCE], seeds=list(self.seeds), **extra)

    def bench_config(self, conf: Configuration, seed: int, device: str = "auto") -> BenchConfig:
        return dataclasses.replace(self.base_config(), methods=[conf.spec], seeds=[seed], epochs=conf.epochs,
                                   device=device)

    def configurations(self) -> list[Configuration]:
        return configurations(self)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def parse_lrs(text: str) -> list[float]:
    """`1e-4:1e-2:5` (5 log-spaced values, ends included) or a comma list `1e-4,1e-3`; values rounded to 3
    significant digits, so that the label written in results is exactly the rate used."""
    text = str(text).strip()
    bad = CurloraError(f"bad learning rates {text!r}; write 1e-4:1e-2:5 (log-spaced) or 1e-4,1e-3")
    if ":" not in text:
        try:
            return check_lrs([float(v) for v in text.split(",") if v.strip()])
        except ValueError as err:
            raise (err if isinstance(err, CurloraError) else bad) from None
    try:
        lo_s, hi_s, n_s = text.split(":")
        lo, hi, n = float(lo_s), float(hi_s), int(n_s)
    except ValueError:
        raise bad from None
    if lo <= 0 or hi <= 0:
        raise CurloraError(f"learning-rate range {text!r} must be positive (log-spaced); e.g. 1e-4:1e-2:5")
    if lo > hi:
        raise CurloraError(f"learning-rate range {text!r} has its ends swapped; write {hi_s}:{lo_s}:{n_s}")
    if n < 1 or (n == 1 and lo != hi) or (n > 1 and lo == hi):
        raise CurloraError(f"learning-rate range {text!r}: give LOW:HIGH:COUNT with COUNT >= 2, LOW < HIGH")
    values = [lo] if n == 1 else [math.exp(math.log(lo) + k * (math.log(hi) - math.log(lo)) / (n - 1))
                                  for k in range(n)]
    return check_lrs(values)


def check_lrs(values) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CurloraError(f"learning rate {v!r} must be a positive number")
        out.append(float(_fmt(v)))
    if not out:
        raise CurloraError("no learning rates given; e.g. --lrs 1e-4:1e-2:5")
    return list(dict.fromkeys(out))


def _method_axes(entry: str, ranks: list[int] | None) -> tuple[list[MethodSpec], bool]:
    """The specs an entry of `methods` stands for, and whether the method takes a sampling option."""
    name, _, opts = entry.strip().partition(":")
    tail = f":{opts}" if opts else ""
    try:
        spec = parse_method(entry)
        specs = [spec]
    except CurloraError as err:
        if not ranks:
            raise CurloraError(f"{err} (or give the space ranks, e.g. --ranks 8,16)") from None
        try:
            specs = [parse_method(f"{name}-{r}{tail}") for r in ranks]
        except CurloraError:
            raise err from None
    probe = specs[0]
    if hasattr(probe, "takes_sampling"):
        return specs, probe.takes_sampling
    base = probe.method + (f"-{probe.rank}" if probe.rank is not None else "")
    try:  # a parser without the property: ask it whether the option parses
        parse_method(f"{base}:sampling=uniform")
        return specs, True
    except CurloraError:
        return specs, False


def _spec_text(method: str, rank, lr: float, alpha, sampling, spec: MethodSpec | None = None) -> str:
    """A configuration's spec: the axes' values, plus the options of the listed spec that no axis owns."""
    opts = [f"lr={_fmt(lr)}"] + ([f"alpha={alpha:g}"] if alpha is not None else [])
    opts += [f"sampling={sampling}"] if sampling is not None else []
    if spec is not None and spec.head_lr is not None:
        opts.append(f"head_lr={_fmt(spec.head_lr)}")
    if spec is not None and spec.targets:
        opts.append("targets=" + "+".join(spec.targets))
    if spec is not None and spec.head_init:
        opts.append(f"head_init={spec.head_init}")
    return method + (f"-{rank}" if rank is not None else "") + ":" + ",".join(opts)


def configurations(space: Space) -> list[Configuration]:
    """Every configuration of the space (order: methods as listed, then rank, lr, α, sampling, epochs), plus
    the head_only reference at the preset's lr unless the space holds it already. The reference trains as many
    epochs as every configuration when the space fixes one value, else the preset's; labels name the epochs only
    where they vary."""
    base = space.base_config()
    epochs_axis = space.epochs or [base.epochs]
    varying = len(epochs_axis) > 1
    out: dict[str, Configuration] = {}

    def add(spec_text: str, epochs: int, reference: bool = False) -> None:
        spec = parse_method(spec_text)
        label = spec_text + (f" epochs={epochs}" if varying else "")
        if label in out:
            if reference:
                out[label] = dataclasses.replace(out[label], reference=True)
                return
            raise CurloraError(f"configuration {label!r} is in the space twice; list each method once")
        out[label] = Configuration(label, spec_text, spec.method, spec.rank, spec.lr, spec.alpha, spec.sampling,
                                   epochs, reference)

    for entry in space.methods:
        specs, takes_sampling = _method_axes(entry, space.ranks)
        for spec in specs:
            lrs = [spec.lr] if spec.lr is not None else (space.lrs or [base.lr])
            if spec.method == "probe" or (spec.method == REFERENCE and (spec.head_lr or base.head_lr)):
                lrs = [base.lr]  # nothing learns at the lr (a probe; heads with their own rate): one configuration
            takes_alpha = getattr(spec, "takes_alpha", spec.has_adapter)
            alphas = [spec.alpha] if spec.alpha is not None else (space.alphas if takes_alpha else None)
            samplings = [spec.sampling] if spec.sampling is not None else (
                space.samplings if takes_sampling else None)
            for lr in lrs:
                for alpha in alphas or [None]:
                    for sampling in samplings or [None]:
                        for epochs in epochs_axis:
                            add(_spec_text(spec.method, spec.rank, lr, alpha, sampling, spec), epochs)
    add(_spec_text(REFERENCE, None, base.lr, None, None), base.epochs if varying else epochs_axis[0], reference=True)
    return list(out.values())


def _list(value, what: str, kind):
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise CurloraError(f"{what} must be a non-empty list")
    try:
        return [kind(v) for v in value]
    except (TypeError, ValueError):
        raise CurloraError(f"{what} must hold {kind.__name__} values, got {value!r}") from None


def make_space(
    methods: list[str] | None,
    *,
    ranks: list[int] | None = None,
    lrs: list[float] | str | None = None,
    alphas: list[float] | None = None,
    samplings: list[str] | None = None,
    epochs: list[int] | None = None,
    seeds: list[int] | None = None,
    bench: dict | None = None,
) -> Space:
    """Validate everything (method specs, ranges, bench options) before anything is written."""
    if not methods:
        raise CurloraError("the space is empty: give methods, e.g. --methods curlora,lora --ranks 8,16")
    methods = [str(m) for m in methods]
    bench = {k: v for k, v in (bench or {}).items() if v is not None}
    unknown = set(bench) - _BENCH_FIELDS
    if unknown:
        raise CurloraError(
            f"unknown or space-owned bench option(s) in the sweep: {', '.join(sorted(unknown))}; "
            f"the space sets methods/seeds/lr/alpha/sampling/epochs, and accepts {', '.join(sorted(_BENCH_FIELDS))}"
        )
    if isinstance(lrs, str):
        lrs = parse_lrs(lrs)
    elif lrs is not None:
        lrs = check_lrs(lrs)
    ranks = _list(ranks, "ranks", int)
    if ranks and any(r < 1 for r in ranks):
        raise CurloraError(f"ranks must be >= 1, got {ranks}")
    epochs = _list(epochs, "epochs", int)
    if epochs and any(e < 1 for e in epochs):
        raise CurloraError(f"epochs must be >= 1, got {epochs}")
    seeds = _list(seeds, "seeds", int)
    space = Space(
        methods=methods,
        ranks=ranks,
        lrs=lrs,
        alphas=_list(alphas, "alphas", float),
        samplings=_list(samplings, "samplings", str),
        epochs=epochs,
        seeds=seeds if seeds is not None else list(make_config(bench.get("preset", "quick"),
                                                                methods=[REFERENCE]).seeds),
        bench=bench,
    )
    if len(set(space.seeds)) != len(space.seeds):
        raise CurloraError(f"a seed is listed twice: {space.seeds}")
    space.configurations()  # every spec parses, nothing listed twice
    return space


def _toml_load(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CurloraError(f"space file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise CurloraError(f"space file {path} is not valid TOML: {err}") from None


def load_space(path: str | Path, **cli: dict) -> Space:
    """A space from a TOML file: a [space] table (methods, ranks, lrs, alphas, samplings, epochs, seeds) and a
    [bench] table (preset, model, suite, data_dir and any other bench option). Options given in `cli` (not None)
    override the file."""
    path = Path(path)
    data = _toml_load(path)
    unknown = set(data) - {"space", "bench"}
    if unknown:
        raise CurloraError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; use [space] and [bench]")
    space = dict(data.get("space", {}))
    bad = set(space) - set(SPACE_KEYS)
    if bad:
        raise CurloraError(f"{path}: unknown key(s) in [space]: {', '.join(sorted(bad))}; "
                           f"use {', '.join(SPACE_KEYS)}")
    bench = dict(data.get("bench", {}))
    bench.update({k: v for k, v in (cli.pop("bench", None) or {}).items() if v is not None})
    space.update({k: v for k, v in cli.items() if v is not None})
    return make_space(space.pop("methods", None), bench=bench, **space)
