"""The typed registry of suites and method specs. Names are unique; asking for an unknown one is a user error
that lists the valid choices.

A method spec is data plus one constructor: name, suite, paper reference, its own config sections (dataclasses whose
fields are the schema and the defaults), and ``from_config(cfg)``, which returns the suite's method object (an
instance of the suite's ``method_type``, checked when a run is resolved). Adding a method is one file in ``cvpdl/``
plus one ``@register(...)`` on its ``from_config`` in its suite module (after lm-evaluation-harness's
``@register_model``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cvpdl.errors import UserInputError

ConfigSections = dict[str, type]  # section name -> dataclass


@dataclass(frozen=True)
class Deviation:
    """One way this implementation differs from the paper's official code: what, why, and how to undo it."""

    what: str
    why: str
    restore: str = ""  # the ``--set section.key=value`` flags that restore the official behaviour ("" if none)

    def line(self) -> str:
        undo = f" Official: `{self.restore}`." if self.restore else " Not switchable."
        return f"{self.what} — {self.why}.{undo}"


@dataclass(frozen=True)
class SearchParam:
    """One tunable hyperparameter of a method: a config key and its range (or choices) for ``benchmark tune``."""

    key: str  # "section.key" of the resolved config
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False
    choices: tuple = ()  # categorical instead of a range when given


@dataclass(frozen=True)
class Floor:
    """A level a method must clear for comparisons with it to mean anything: chance for a classifier, the target
    of a convergence measure. The report flags every method at or below it, without anyone asking."""

    metric: str
    split: str
    # (metric, split) in metrics.csv that holds the level, e.g. ("chance_top1", "test"); None: a censored metric
    # (NaN = never reached), flagged where no seed reaches it
    level: tuple[str, str] | None = None


@dataclass(frozen=True)
class Sweep:
    """A knob that may drive a primary claim: ``benchmark sensitivity`` reruns ``methods`` at each value (on the
    development seeds) and measures the claim's Δ at each. ``values`` include the default."""

    claim: str  # key of the claim it probes
    knob: str  # "section.key"
    values: tuple
    methods: tuple[str, ...]  # the methods whose cells the knob changes


@dataclass(frozen=True)
class MethodSpec:
    name: str
    suite: str
    paper: str
    from_config: Callable[[dict], Any]  # resolved config (sections as dicts) -> the suite's method object
    config: ConfigSections = field(default_factory=dict)
    deviations: tuple[Deviation, ...] = ()  # declared differences from the paper's official code
    search_space: tuple[SearchParam, ...] = ()  # what ``benchmark tune`` may change, the same budget for every method
    # constraints spanning config sections (config → None or ``UserInputError``), each a top-level function of a module
    # that imports no torch: the command line runs them from the catalog before importing torch
    checks: tuple[Callable[[dict], None], ...] = ()


@dataclass(frozen=True)
class Section:
    """One course question as REPORT.md and summary.md answer it."""

    heading: str
    literature: str  # the answer the papers give
    measured: list[str]  # what this harness measured, every claim with its numbers
    figures: list[str]  # figure names under results/<suite>/figures/
    verdict: str = ""  # does the measurement agree with the paper? (computed from the intervals)


@dataclass(frozen=True)
class SuiteSpec:
    """A suite: its question, dataset, config schema and profiles, and the hooks the runner calls.

    ``prepare(run) -> shared`` builds what all cells share (data, cached models); ``run_cell(run, shared, method,
    seed, generator) -> CellResult`` trains and evaluates one (method, seed); ``run_population(run, shared, method,
    seeds, members) -> [CellResult | NonFiniteLossError]``, where a suite has it, trains several seeds of one
    method as one batched population (``cvpdl.population``; ``run --population``); figures and summary questions
    are drawn from the written results by ``benchmark.report`` and ``paper_figures``.
    """

    name: str
    question: str
    dataset: str
    config: ConfigSections
    profiles: dict[str, dict[str, Any]]  # profile -> {"section.key": value} over the dataclass defaults
    prepare: Callable[..., Any] | None = None
    run_cell: Callable[..., Any] | None = None
    run_population: Callable[..., Any] | None = None
    baseline: str | None = None
    headline: tuple[tuple[str, str], ...] = ()  # (metric, split) pairs of the printed summary table
    # (metrics, timings) DataFrames -> the course questions this suite answers, with measured lines
    report_sections: Callable[[Any, Any], list[Section]] | None = None
    datasets: tuple[str, ...] = ("digits",)  # the --data values prepare() reads; any other is refused up front
    # (metric, split) that ``benchmark tune`` maximises: a validation number, never test (last epoch if per-epoch)
    tuning_objective: tuple[str, str] | None = None
    floors: tuple[Floor, ...] = ()  # levels below which a method (a baseline above all) is flagged in the report
    sweeps: tuple[Sweep, ...] = ()  # the knobs that may drive its primary claims (``benchmark sensitivity``)
    # the config sections whose float fields a population's members may differ in (``METHOD_SECTIONS``: each
    # method's own; a ``section.key``: that field alone), besides the ``train`` recipe's lr and weight decay
    # (``invocation.member_knob``): then ``sensitivity --population`` trains a sweep's values × seeds together,
    # ``tune --population`` trials × seeds
    member_settings: tuple[str, ...] = ()
    method_type: type = object  # what every method's ``from_config`` returns: what ``run_cell`` trains


METHOD_SECTIONS = "method"  # in ``SuiteSpec.member_settings``: the config sections of each method itself

# The report's suites and every suite's profiles, import-free for --help and the checks made before torch is
# imported; tests check them against the registry.
SUITE_NAMES = ("detr", "kd", "ovd")
PROFILES = ("quick", "default", "full")


class Registry:
    def __init__(self):
        self._suites: dict[str, SuiteSpec] = {}
        self._methods: dict[str, dict[str, MethodSpec]] = {}

    def register_suite(self, spec: SuiteSpec) -> SuiteSpec:
        if spec.name in self._suites:
            raise ValueError(f"suite {spec.name!r} is already registered")
        self._suites[spec.name] = spec
        self._methods[spec.name] = {}
        return spec

    def register_method(self, spec: MethodSpec) -> MethodSpec:
        if spec.suite not in self._suites:
            raise ValueError(f"method {spec.name!r} names unknown suite {spec.suite!r}")
        if spec.name in self._methods[spec.suite]:
            raise ValueError(f"method {spec.name!r} is already registered in suite {spec.suite!r}")
        self._methods[spec.suite][spec.name] = spec
        return spec

    def suites(self) -> list[SuiteSpec]:
        return list(self._suites.values())

    def suite(self, name: str) -> SuiteSpec:
        if name not in self._suites:
            raise UserInputError(f"unknown suite {name!r}; choose from: {', '.join(self._suites)}")
        return self._suites[name]

    def methods(self, suite: str) -> list[MethodSpec]:
        return list(self._methods[self.suite(suite).name].values())

    def method_names(self, suite: str, present=None) -> list[str]:
        """The suite's method names in registry order (the only list of them), optionally only those in ``present``."""
        return [m.name for m in self.methods(suite) if present is None or m.name in set(present)]

    def register(self, suite: str, name: str, paper: str, config: ConfigSections | None = None,
                 deviations: tuple[Deviation, ...] = (), search_space: tuple[SearchParam, ...] = (),
                 checks: tuple[Callable[[dict], None], ...] = ()
                 ) -> Callable[[Callable[[dict], Any]], Callable[[dict], Any]]:
        """The one registration form: ``@REGISTRY.register(suite, name, paper, ...)`` on a method's
        ``from_config``."""
        def decorate(from_config: Callable[[dict], Any]) -> Callable[[dict], Any]:
            self.register_method(MethodSpec(name, suite, paper, from_config, dict(config or {}), tuple(deviations),
                                            tuple(search_space), tuple(checks)))
            return from_config
        return decorate

    def build(self, method: MethodSpec, cfg: dict) -> Any:
        """``method.from_config(cfg)`` after the method's cross-section ``checks``, checked against its suite's
        ``method_type`` (a registration that returns anything else is a bug, named here rather than inside a cell)."""
        for check in method.checks:
            check(cfg)
        built = method.from_config(cfg)
        expected = self.suite(method.suite).method_type
        if not isinstance(built, expected):
            raise TypeError(f"method {method.name!r} of suite {method.suite!r}: from_config returned "
                            f"{type(built).__name__}, not the suite's {expected.__name__}")
        return built

    def method(self, suite: str, name: str) -> MethodSpec:
        known = self._methods[self.suite(suite).name]
        if name not in known:
            raise UserInputError(f"unknown method {name!r} for suite {suite!r}; choose from: {', '.join(known)}")
        return known[name]


REGISTRY = Registry()
