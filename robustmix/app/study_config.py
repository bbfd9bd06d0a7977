"""The typed description of a study, its presets, and its TOML form.

A study is a :class:`StudyConfig`: which methods and seeds (``seeds`` for every method,
``seeds_by_method`` where a method has its own, e.g. more vanilla runs), a
:class:`TrainConfig` template (each run sets its method, seed and device), an
:class:`AttackPlan`, an :class:`EvaluatePlan` and its ``[verdicts]``
(:class:`~robustmix.evaluations.declaration.Declaration`: the primary comparisons and the margins
of "no effect", declared before any data). A TOML file reads into it (:func:`load_config`, checked in one
place: :meth:`StudyConfig.from_dict`) and it writes back out (:func:`to_toml`). In the TOML
the ``[train]`` table holds the training settings with the mix settings flat beside them
(``alpha``, ``mix_prob``, ...), as ``robustmix train`` spells them as flags, and each
method's options in its own table, ``[train.options.hmix]`` (``hmix_r = 0.5``).
``methods`` lists registered names or factories' paths (``examples.fmix:fmix``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from robustmix.attacks import AttackConfig, DiagnosticSettings, PGDSettings, parse_eps
from robustmix.evaluations.declaration import Declaration
from robustmix.core import methods, runs
from robustmix.core.config import MixConfig, TrainConfig
from robustmix.core.errors import ConfigError, UsageError
from robustmix.core.methods import MIX_NAMES
from robustmix.app.presets import PRESETS
from robustmix.mixing.registry import load_method, resolved

RUN_KEYS = ("mix", "factory", "seed", "device")  # set per run by the study, not in [train]
MIX_KEYS = tuple(f.name for f in dataclasses.fields(MixConfig)
                 if f.name not in ("mix", "options", "factory"))
METHODS_ACCEPTED = (f"{', '.join(MIX_NAMES)}, registered plugins or factories' paths "
                    "(package.module:factory)")
Options = dict[str, dict[str, Any]]   # method name -> its options
PHASES = ("pilot", "confirmatory", "confirmation")   # README "The three phases"


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class AttackPlan:
    """``[attack]``: the attacks every run meets at every ε of the grid, on the same
    examples and every seed, with the attack-failure diagnostics; optionally a further
    AutoAttack configuration (``autoattack``: ``autoattack`` for the standard version)
    on some seeds, ε and examples.

    It is also ``robustmix attack``'s configuration, one flag per field but the
    ``autoattack*`` ones, with these defaults (each preset states every value it uses)."""

    eps: str = "8/255"
    norm: str = "linf"
    attacks: tuple[str, ...] = AttackConfig.attacks   # the attack command's default list
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per attack settings
    pgd_steps: int = PGDSettings.steps
    pgd_step_size: float | None = None   # None: ε/4 (TOML has no null: left out)
    restarts: int = 1
    n_examples: int = 0               # 0: the whole test set
    diagnostics: bool = True
    autoattack: str = ""              # "", apgd or autoattack
    autoattack_eps: str = ""
    autoattack_examples: int = 0
    autoattack_seeds: tuple[int, ...] = ()   # (): every seed
    batch_size: int = 256
    seed: int = 0

    def validate(self) -> None:
        parse_eps(self.eps)
        if not isinstance(self.options, dict) or any(
                not isinstance(v, dict) for v in self.options.values()):
            raise ConfigError("options", "must be a table of attack = {setting = value}")
        if self.autoattack:
            if self.autoattack not in ("apgd", "autoattack"):
                raise ConfigError("autoattack", f"must be apgd, autoattack or empty; "
                                  f"got {self.autoattack!r}")
            parse_eps(self.autoattack_eps)
        for key in ("pgd_steps", "restarts", "batch_size", "n_examples",
                    "autoattack_examples", "seed"):
            least = 0 if key in ("n_examples", "autoattack_examples", "seed") else 1
            if not _count(getattr(self, key), least):
                raise ConfigError(key, f"must be a non-negative integer{' >= 1' * least}; "
                                  f"got {getattr(self, key)!r}")
        if not isinstance(self.diagnostics, bool):
            raise ConfigError("diagnostics", f"must be true or false; got {self.diagnostics!r}")
        self.config().validate()

    def config(self) -> AttackConfig:
        """The attacks of every run (at every ε of ``eps``)."""
        return AttackConfig(attacks=tuple(self.attacks), eps=tuple(parse_eps(self.eps)),
                            norm=self.norm, batch_size=self.batch_size, seed=self.seed,
                            pgd=PGDSettings(steps=self.pgd_steps, step_size=self.pgd_step_size,
                                            restarts=self.restarts),
                            options={k: dict(v) for k, v in self.options.items()})

    def auto(self) -> AttackConfig | None:
        """The further AutoAttack configuration, or None when the study runs none."""
        if not self.autoattack:
            return None
        return dataclasses.replace(self.config(), attacks=(self.autoattack,),
                                   eps=tuple(parse_eps(self.autoattack_eps)),
                                   options={k: v for k, v in self.options.items()
                                            if k == self.autoattack})

    def autoattacks(self, seed: int) -> bool:
        return self.auto() is not None and (not self.autoattack_seeds
                                            or seed in self.autoattack_seeds)


@dataclass(frozen=True)
class EvaluatePlan:
    """``[evaluate]``: the settings of :func:`robustmix.evaluations.evaluate_run` for every run."""

    n_examples: int = 1000     # 0: the whole test set
    q_draws: int = 512
    seed: int = 0
    corruptions: bool = False  # corruptions.csv too, on the same n_examples test images

    def validate(self) -> None:
        for key in ("n_examples", "q_draws", "seed"):
            if not _count(getattr(self, key), 0):
                raise ConfigError(key, f"must be a non-negative integer; "
                                  f"got {getattr(self, key)!r}")
        if not isinstance(self.corruptions, bool):
            raise ConfigError("corruptions", f"must be true or false; got {self.corruptions!r}")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study; ``train`` is the template every run's TrainConfig starts from."""

    out: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    train: TrainConfig
    attack: AttackPlan = field(default_factory=AttackPlan)
    evaluate: EvaluatePlan = field(default_factory=EvaluatePlan)
    device: str = "auto"
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    # [train.options.NAME]: each method's options, its defaults filled in for the study's
    # methods; a run takes its own method's
    options: Options = field(default_factory=dict)
    seeds_by_method: dict[str, tuple[int, ...]] = field(default_factory=dict)
    verdicts: Declaration = field(default_factory=Declaration)
    # every rule and threshold of the attack-failure diagnostics, frozen with the rest
    diagnostics: DiagnosticSettings = field(default_factory=DiagnosticSettings)
    phase: str = "confirmatory"       # one of PHASES
    pilot_seeds: tuple[int, ...] = (100, 101, 102)   # every method's, in the pilot

    def seeds_of(self, method: str) -> tuple[int, ...]:
        """The seeds of ``method`` (a name or a factory's path): its own list in
        ``seeds_by_method``, else ``seeds``."""
        name = methods.split_spec(method)[0]
        return tuple(self.seeds_by_method.get(name, self.seeds))

    def declaration(self, source: str = "") -> Declaration:
        """The ``[verdicts]`` declaration with its primary grid resolved (empty: the
        ``[attack]`` grid and norm) and where it came from."""
        eps = self.verdicts.primary_eps or self.attack.eps
        norm = self.verdicts.norm if self.verdicts.primary_eps else self.attack.norm
        names = self.verdicts.methods or tuple(
            m for m in (methods.split_spec(spec)[0] for spec in self.methods) if m != "vanilla")
        return dataclasses.replace(self.verdicts, primary_eps=eps, norm=norm, methods=names,
                                   source=source or self.verdicts.source or "the study",
                                   phase=self.phase)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> "StudyConfig":
        """Check a study read from TOML (or a preset) and build it; one line on error."""
        values = dict(values)
        top = {f.name for f in dataclasses.fields(cls)} - {"options"}   # it is in [train]
        unknown = sorted(set(values) - top)
        if unknown:
            raise UsageError(f"{source}: unknown keys {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(top))}")
        sections = {}
        for name, plan in (("attack", AttackPlan), ("evaluate", EvaluatePlan),
                           ("verdicts", Declaration), ("diagnostics", DiagnosticSettings)):
            runs.check_fields(values.get(name, {}), plan, source, what=f"[{name}] settings")
            section = {k: tuple(v) if isinstance(v, list) else v
                       for k, v in values.get(name, {}).items()}
            sections[name] = _checked(lambda: plan(**section), name, source)
        template, options = _train_template(values.get("train", {}), source)
        config = cls(
            out=values.get("out"), methods=_listed(values, "methods", source),
            seeds=_listed(values, "seeds", source), device=values.get("device", "auto"),
            train=template, options=options,
            variants=values.get("variants", {}), description=values.get("description", ""),
            paper=values.get("paper", ""),
            seeds_by_method=_seeds_by_method(values.get("seeds_by_method", {}), source),
            phase=values.get("phase", "confirmatory"),
            pilot_seeds=tuple(values.get("pilot_seeds", (100, 101, 102))),
            **sections)
        return config.completed(source)

    def completed(self, source: str) -> "StudyConfig":
        """The study with its methods loaded (a broken plugin refused here), the options of
        each filled in with its defaults, and every setting checked."""
        names = self.method_names(source)
        options = {name: dict(values) for name, values in self.options.items()}
        for spec, name in zip(self.methods, names):
            mix = MixConfig(mix=name, factory=methods.split_spec(spec)[1],
                            options=options.get(name, {}))
            try:
                options[name] = resolved(mix).options
            except ConfigError as err:
                field_ = {"mix": "methods", "options": f"train.options.{name}"}.get(
                    err.field, f"train.options.{name}.{err.field}")
                raise ConfigError(field_, err.problem, source=source) from None
        completed = dataclasses.replace(self, options={k: v for k, v in options.items() if v})
        completed.validate(source)
        return completed

    def method_names(self, source: str = "study") -> list[str]:
        """The name of each method (a path names its factory's), checked."""
        if not isinstance(self.methods, tuple) or not self.methods or any(
                not isinstance(m, str) for m in self.methods):
            raise ConfigError("methods", f"must be a non-empty list of {METHODS_ACCEPTED}; "
                              f"got {list(self.methods)!r}", source=source)
        names = []
        for spec in self.methods:
            try:
                name, factory = methods.split_spec(spec)
            except ConfigError as err:
                raise ConfigError("methods", err.problem, source=source) from None
            if factory is None and name not in methods.names():
                raise ConfigError("methods", f"must be a non-empty list of "
                                  f"{METHODS_ACCEPTED}; got {list(self.methods)!r}",
                                  source=source)
            if name in names:
                raise ConfigError("methods", f"name {name} twice; got {list(self.methods)!r}",
                                  source=source)
            names.append(name)
        return names

    def validate(self, source: str) -> None:
        names = self.method_names(source)
        if not self.seeds or any(not _count(s, -2**63) for s in self.seeds):
            raise ConfigError("seeds", f"must be a non-empty list of integers; "
                              f"got {list(self.seeds)!r}", source=source)
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError("out", "must be a directory name", source=source)
        if not isinstance(self.variants, dict) or any(
                not isinstance(v, dict) for v in self.variants.values()):
            raise ConfigError("variants", "must be a table of name = {train overrides}",
                              source=source)
        for name in self.options:
            if not isinstance(self.options[name], dict) or name not in methods.names():
                raise ConfigError(f"train.options.{name}", f"must be a table of the options "
                                  f"of a registered method (the study's: {', '.join(names)})",
                                  source=source)
        for method, seeds in self.seeds_by_method.items():
            if method not in names or not seeds or any(not _count(s, -2**63) for s in seeds):
                raise ConfigError("seeds_by_method", f"must map the study's methods "
                                  f"({', '.join(names)}) to non-empty lists of integers; "
                                  f"got {method} = {list(seeds)!r}", source=source)
        for variant in self.variant_names():
            for method in self.methods:
                self.run_config(variant, method, self.seeds[0], source)
        _checked(self.attack.validate, "attack", source)
        _checked(self.evaluate.validate, "evaluate", source)
        _checked(self.verdicts.validate, "verdicts", source)
        _checked(lambda: _check_numbers(self.diagnostics), "diagnostics", source)
        if self.phase not in PHASES:
            raise ConfigError("phase", f"must be one of {', '.join(PHASES)}; got "
                              f"{self.phase!r}", source=source)
        if not self.pilot_seeds or any(not _count(s, -2**63) for s in self.pilot_seeds):
            raise ConfigError("pilot_seeds", f"must be a non-empty list of integers; "
                              f"got {list(self.pilot_seeds)!r}", source=source)

    def variant_names(self) -> list[str]:
        return list(self.variants) or [""]

    def run_config(self, variant: str, method: str, seed: int,
                   source: str = "study") -> TrainConfig:
        """The TrainConfig of one run of the study (``method`` as ``methods`` spells it)."""
        name, factory = methods.split_spec(method)
        values = _flat(self.train)
        overrides = dict(self.variants.get(variant, {}))
        own = _split_options(overrides, f"{source} [variants]").get(name, {})
        values.update(overrides)
        values["mix"] = {"mix": name, "factory": factory,
                         "options": {**self.options.get(name, {}), **own}}
        return _train_config({**values, "seed": seed, "device": self.device},
                             f"{source} [train]")

    def with_overrides(self, **changes: Any) -> "StudyConfig":
        """The study with top-level settings replaced (None: keep), checked again. New
        ``seeds`` apply to every method (``seeds_by_method`` is dropped)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "seeds" in changes:
            changes.setdefault("seeds_by_method", {})
        return dataclasses.replace(self, **changes).completed("command line")


def _check_numbers(settings) -> None:
    """Every field of a settings record has its default's type (bool, int or float) and is
    not negative: the diagnostics' rules and thresholds as a TOML table may give them."""
    for f in dataclasses.fields(settings):
        value, default = getattr(settings, f.name), f.default
        kind = bool if isinstance(default, bool) else type(default)
        ok = isinstance(value, bool) if kind is bool else (
            not isinstance(value, bool) and isinstance(value, (int, float) if kind is float
                                                       else kind) and value >= 0)
        if not ok:
            wanted = "true or false" if kind is bool else f"a non-negative {kind.__name__}"
            raise ConfigError(f.name, f"must be {wanted}; got {value!r}")


def _seeds_by_method(value: Any, source: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict) or any(not isinstance(v, list) for v in value.values()):
        raise ConfigError("seeds_by_method", f"must be a table of method = [seeds]; got "
                          f"{value!r}", source=source)
    return {str(k): tuple(v) for k, v in value.items()}


def _listed(values: dict[str, Any], key: str, source: str) -> tuple:
    value = values.get(key)
    if not isinstance(value, list):
        kinds = METHODS_ACCEPTED if key == "methods" else "integers"
        raise ConfigError(key, f"must be a non-empty list of {kinds}; got {value!r}",
                          source=source)
    return tuple(value)


def _checked(build, section: str, source: str):
    """``build()``, a ConfigError's field named inside ``section`` and the source."""
    try:
        return build()
    except ConfigError as err:
        raise err.within(section, source) from None


def _flat(train: TrainConfig) -> dict[str, Any]:
    """A TrainConfig as [train] spells it: mix settings flat, no per-run keys or options."""
    values = train.to_dict()
    mix = values.pop("mix")
    for key in ("mix", "options", "factory"):
        mix.pop(key)
    for key in ("seed", "device"):
        values.pop(key)
    return {**values, **mix}


def _split_options(values: dict[str, Any], source: str) -> Options:
    """Take the options out of [train] (or a variant): its ``options`` table of tables, one
    per method; a built-in's option spelled flat (``hmix_r = 0.5``) is refused, with its
    table."""
    table = values.pop("options", {})
    if not isinstance(table, dict) or any(not isinstance(v, dict) for v in table.values()):
        raise UsageError(f"{source}: options must be a table of tables, one per method: "
                         "[train.options.hmix] hmix_r = 0.5")
    for key in values:
        if key in methods.BUILTIN_OPTIONS:
            owner = methods.BUILTIN_OPTIONS[key][0]
            raise UsageError(f"{source}: {key} is an option of {owner}: give it in "
                             f"[train.options.{owner}]")
    return {name: dict(given) for name, given in table.items()}


def _train_config(values: dict[str, Any], source: str) -> TrainConfig:
    values = dict(values)
    values["mix"] = {**values["mix"], **{key: values.pop(key) for key in MIX_KEYS
                                          if key in values}}
    return TrainConfig.from_dict(values, source=source)


def _train_template(values: Any, source: str) -> tuple[TrainConfig, Options]:
    if not isinstance(values, dict):
        raise UsageError(f"{source}: [train] must be a table of training settings")
    extra = sorted(set(values) & set(RUN_KEYS))
    if extra:
        raise UsageError(f"{source}: [train] cannot set {', '.join(extra)}: the study sets "
                         "them per run (methods, seeds and the top-level device)")
    values = dict(values)
    options = _split_options(values, f"{source} [train]")
    values["mix"] = {"mix": "vanilla"}
    return _train_config(values, f"{source} [train]"), options


def load_config(preset: str | None, config_path: str | None) -> StudyConfig:
    """A preset by name, or a TOML file (keys as in the presets; missing keys from the preset
    it names as ``preset = "NAME"``, else from digits). A TOML whose [train] names another
    data set than that preset's does not inherit the preset's image size (digits' 8×8)
    nor its held-out images (digits' 200)."""
    if config_path is None:
        name = preset or "digits"
        if name not in PRESETS:
            raise UsageError(f"unknown preset '{name}'; valid: {', '.join(PRESETS)}")
        return StudyConfig.from_dict(copy.deepcopy(PRESETS[name]), source=f"preset {name}")
    values = read_toml(config_path)
    values.pop("declaration", None)   # its hashes: robustmix.app.protocol checks them
    name = values.pop("preset", "digits")
    base = copy.deepcopy(PRESETS.get(name, PRESETS["digits"]))
    train = values.get("train")
    if isinstance(train, dict) and train.get("dataset", base["train"]["dataset"]) != \
            base["train"]["dataset"]:
        for key in ("image_size", "holdout"):   # both are the preset's data set's sizes
            if key not in train:
                base["train"].pop(key, None)
    return StudyConfig.from_dict(_merge(base, values), source=config_path)


def read_toml(path: str) -> dict[str, Any]:
    import tomllib  # standard library from Python 3.11; on 3.10 only --config needs it

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--config {path} is not valid TOML ({err})") from None


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        # these tables replace, whole: a study that names its own means them all (an
        # empty seeds_by_method: every method takes `seeds`)
        if isinstance(value, dict) and isinstance(base.get(key), dict) and \
                key not in ("variants", "options", "seeds_by_method"):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def to_dict(config: StudyConfig) -> dict[str, Any]:
    """The study as its TOML tables hold it (None settings left out: TOML has no null)."""
    values = {"description": config.description, "out": config.out, "phase": config.phase,
              "methods": list(config.methods), "seeds": list(config.seeds),
              "pilot_seeds": list(config.pilot_seeds), "device": config.device}
    if config.paper:
        values["paper"] = config.paper
    values["train"] = {k: v for k, v in _flat(config.train).items() if v is not None}
    if config.options:
        values["train"]["options"] = config.options
    values["attack"] = {k: v for k, v in dataclasses.asdict(config.attack).items()
                        if v is not None}
    values["evaluate"] = dataclasses.asdict(config.evaluate)
    values["seeds_by_method"] = {k: list(v) for k, v in config.seeds_by_method.items()}
    values["verdicts"] = {k: v for k, v in dataclasses.asdict(config.verdicts).items()
                          if k not in ("source", "phase")}
    values["diagnostics"] = dataclasses.asdict(config.diagnostics)
    if config.variants:
        values["variants"] = config.variants
    return values


def to_toml(config: StudyConfig) -> str:
    """A study as TOML (scalars and lists at the top, then one table per section)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):  # an inline table, e.g. options = {apgd = {targets = 3}}
            return "{" + ", ".join(f"{json.dumps(k) if not k.isidentifier() else k} = "
                                   f"{value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {v!r} as TOML")

    def section(name: str, table: dict, header: bool = True) -> list[str]:
        """``[name]``, its values, then its tables as ``[name.key]`` (options per method)."""
        # an empty table is written inline: a file that leaves it out inherits its preset's
        scalars = [f"{k} = {value(x)}" for k, x in table.items()
                   if not isinstance(x, dict) or not x]
        lines = ["", f"[{name}]"] + scalars if header or scalars else []
        for key, inner in table.items():
            if isinstance(inner, dict) and inner:
                lines += section(f"{name}.{key}", inner, header=False)
        return lines

    values = to_dict(config)
    lines = [f"{key} = {value(v)}" for key, v in values.items() if not isinstance(v, dict)]
    for key, table in values.items():
        if isinstance(table, dict) and key != "variants":
            lines += section(key, table)
    for name, overrides in values.get("variants", {}).items():
        lines += section(f'variants."{name}"', overrides)
    return "\n".join(lines) + "\n"
