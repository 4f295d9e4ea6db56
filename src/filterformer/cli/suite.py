"""Suites: one model per category, routed by ``configs/suite/<name>.yaml`` (``ff-train suite=``).

A suite file maps each category to a route (a model's list of hydra overrides) plus overrides
of its own, and names the suite folder that holds one run folder per category. ``ff-train
suite=NAME [category=C] [overrides]`` becomes one plain ``ff-train`` command line per category:
the route's overrides, then the category's, then ``category=C run_dir=<dir>/C``, then the
user's (so the user's win). ``<route>:key=value`` applies to that route's categories only, and
``suite.dir=DIR`` / ``suite.categories=[a,b]`` pick the folder and a subset. Read without torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from filterformer.errors import ConfigError
from filterformer.io import check_name

PREFIX = "suite"
ROUTED = re.compile(r"^([A-Za-z_][\w]*):(.+)$")
VALUED = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--config-dir", "-cd")
"""Hydra's options that take a value."""


ROUTABLE = re.compile(r"(?<![\w:./-])((?:encoder|model|train|input|eval|category|preset)[\w.]*=)")
"""A ``key=value`` fix in a message that a suite must give as ``<route>:key=value``."""


@dataclass
class RouteContext:
    """The route of the suite job being trained (None outside suites)."""

    route: str | None = None

    def rewrite(self, message: str) -> str:
        """A job's error with its fixes in the route form: ``encoder.weights=F`` would reach
        every route, ``cpr:encoder.weights=F`` reaches this one."""
        if self.route is None:
            return message
        routed = ROUTABLE.sub(rf"{self.route}:\1", message)
        return f"{routed} (suite route {self.route}: give route settings as {self.route}:key=value)"


CURRENT_ROUTE = RouteContext()


@dataclass(frozen=True)
class Job:
    """One category of a suite: its route (model) and its ff-train command line."""

    category: str
    route: str
    argv: list[str]
    run_dir: Path


def load_suite(folder: Path, name: str) -> DictConfig:
    """``configs/suite/<name>.yaml``, merged over its ``base`` with the base's routes renamed."""
    path = folder / PREFIX / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (folder / PREFIX).glob("*.yaml"))
        raise ConfigError(f"suite={name}: no {path}; valid: {', '.join(names)}.")
    suite = OmegaConf.load(path)
    if "base" not in suite:
        return suite
    base = load_suite(folder, str(suite.base))
    rename = dict(suite.get("rename") or {})
    for spec in base.categories.values():
        spec.route = rename.get(spec.route, spec.route)
    merged = OmegaConf.merge(base, {k: v for k, v in suite.items() if k not in ("base", "rename")})
    return merged  # type: ignore[return-value]


def split_args(args: Sequence[str]) -> tuple[str | None, dict[str, Any], list[str]]:
    """(suite name or None, ``suite.*`` settings, the other arguments)."""
    name, settings, rest = None, {}, []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == PREFIX:
            name = value
        elif key.startswith(PREFIX + "."):
            parsed = OmegaConf.create(f"v: {value}")  # YAML, as hydra reads values
            settings[key[len(PREFIX) + 1 :]] = OmegaConf.to_container(parsed)["v"]
        else:
            rest.append(arg)
    return name, settings, rest


def _flags_first(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(hydra's options with their values, the overrides): hydra wants options first."""
    flags, overrides, take = [], [], False
    for arg in args:
        if take or arg.startswith("-"):
            flags.append(arg)
            take = arg in VALUED and not take
        else:
            overrides.append(arg)
    return flags, overrides


def _category_of(args: Sequence[str]) -> str | None:
    found = [a.split("=", 1)[1] for a in args if a.startswith("category=")]
    return found[-1] if found else None


def suite_jobs(folder: Path, args: Sequence[str]) -> list[Job] | None:
    """The plain ff-train command lines of ``args``, or None when they name no suite."""
    name, settings, rest = split_args(args)
    if name is None:
        return None
    flags, rest = _flags_first(rest)
    suite = load_suite(folder, name)
    base_dir = Path(str(settings.get("dir", suite.dir)))
    chosen = _category_of(rest)
    categories = [chosen] if chosen else list(settings.get("categories") or suite.categories)
    jobs = []
    for category in categories:
        if category not in suite.categories:
            raise ConfigError(
                f"suite={name}: no route for category {category!r}; it routes "
                f"{', '.join(suite.categories)}."
            )
        spec = suite.categories[category]
        if spec.route not in suite.routes:
            raise ConfigError(
                f"suite={name}: category {category} names unknown route {spec.route}."
            )
        argv = [*flags, *suite.routes[spec.route], *(spec.get("overrides") or [])]
        if spec.get("lighting") and suite.get("lighting"):
            argv += list(suite.lighting)
        run_dir = base_dir / check_name(category, f"suite={name}: category")
        config = spec.get("category")  # another category file, renamed (suite=demo)
        argv += [f"category={config}", f"category.name={category}"] if config else []
        argv += [] if config else [f"category={category}"]
        argv += [f"run_dir={run_dir}"]
        for arg in rest:
            routed = ROUTED.match(arg)
            if routed is None:
                argv.append(arg)
            elif routed.group(1) == spec.route:
                argv.append(routed.group(2))
        jobs.append(Job(category, str(spec.route), [str(a) for a in argv], run_dir))
    if any(a in ("-m", "--multirun") for a in flags):
        return _sweeps(jobs, base_dir)
    return jobs


def routing_table(name: str, jobs: Sequence[Job]) -> str:
    """What ``ff-train --cfg job suite=NAME`` prints: each category's route, run folder and
    overrides, and how to see one category's whole config."""
    rows = [("category", "route", "run folder", "overrides")]
    rows += [(job.category, job.route, str(job.run_dir), " ".join(_own(job.argv))) for job in jobs]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3]
        for row in rows
    ]
    example = jobs[0]
    lines += [
        "",
        f"one category's whole config: ff-train --cfg job suite={name} category={example.category}",
        "settings for one route only: <route>:key=value (e.g. "
        f"{example.route}:encoder.weights=FILE); key=value reaches every route",
    ]
    return "\n".join(line.rstrip() for line in lines)


def _own(argv: Sequence[str]) -> list[str]:
    """The overrides of a job without hydra's options and its run_dir."""
    return [a for a in argv if "=" in a and not a.startswith(("-", "run_dir="))]


def _sweeps(jobs: Sequence[Job], base_dir: Path) -> list[Job]:
    """With ``-m``: one hydra sweep over the categories whose command lines differ only in
    the category, so that the launcher (joblib, SLURM) runs every category as its own job."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        key = tuple(a for a in job.argv if not a.startswith(("category=", "run_dir=")))
        groups.setdefault(key, []).append(job)
    sweeps = []
    for argv, group in groups.items():
        categories = ",".join(job.category for job in group)
        run_dir = f"run_dir={base_dir}/${{category.name}}"  # resolved per job by hydra
        sweeps.append(
            Job(categories, group[0].route, [*argv, f"category={categories}", run_dir], base_dir)
        )
    return sweeps
