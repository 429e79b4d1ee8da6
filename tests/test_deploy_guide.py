"""docs/deploy.md against what it describes: the template's parameters and alarms, the dispatch
profiles, the keep-hot tick, the worker's settings and the CLI. Every expected value is read
from the template or the code, so changing one of them without the guide fails here.

The guide's tables are the contract: a table is found by its first header cell, a row by the
`code` or **bold** name in its first cell, and numbers are read from its cells.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from control_plane.scheduler.keephot import PING_TTL_S
from control_plane.scheduler.policy import PROFILES
from handler.settings import WorkerSettings
from infra.aws_resources import load_template, resources_of_type
from infra.cli import app

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "deploy.md"
NO_DEFAULT = "—"  # a parameter `sam deploy` must be given
EMPTY_DEFAULT = "empty"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def by_name(self) -> dict[str, list[str]]:
        named = {_name(row[0]): row for row in self.rows}
        assert len(named) == len(self.rows), f"a name twice in the table {self.header}"
        return named


def _cells(line: str) -> list[str]:
    # `\|` stands for a pipe inside a cell.
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _tables(text: str) -> list[Table]:
    lines = text.splitlines()
    tables: list[Table] = []
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            rows = []
            for line in lines[i + 2 :]:
                if not line.startswith("|"):
                    break
                rows.append(_cells(line))
            tables.append(Table(_cells(lines[i]), rows))
    return tables


def _name(cell: str) -> str:
    """A row's name: the cell's first `code` span as written, or **bold** text in lower case."""
    found = re.search(r"`([^`]+)`|\*\*([^*]+)\*\*", cell)
    assert found, f"no name in {cell!r}"
    code, bold = found.groups()
    return code.strip() if code else bold.strip().lower()


def _ints(cell: str) -> list[int]:
    """The whole numbers in a cell, in order (thousands separated by commas)."""
    return [int(n.replace(",", "")) for n in re.findall(r"(?<![\w.])\d[\d,]*(?![\w.])", cell)]


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


@pytest.fixture(scope="module")
def tables(guide: str) -> dict[str, Table]:
    return {table.header[0].strip("`*").lower(): table for table in _tables(guide)}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _default(template: dict[str, Any], name: str) -> Any:
    return template["Parameters"][name]["Default"]


def _tick_s(template: dict[str, Any]) -> int:
    """The sweep's interval, which is also how often keep-hot pings a warm worker."""
    return 60 * int(_default(template, "TickRateMinutes"))


def _default_profile(template: dict[str, Any]) -> str:
    return str(_default(template, "DispatchProfile"))


# --- the parameters ------------------------------------------------------------------------


def _shown(parameter: dict[str, Any]) -> str:
    if "Default" not in parameter:
        return NO_DEFAULT
    return EMPTY_DEFAULT if parameter["Default"] == "" else str(parameter["Default"])


def test_the_parameter_table_lists_every_parameter_with_its_default(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    rows = tables["parameter"].by_name()
    parameters = template["Parameters"]
    assert sorted(set(parameters) - set(rows)) == [], "parameters the guide does not list"
    assert sorted(set(rows) - set(parameters)) == [], "rows for parameters that do not exist"
    for name, parameter in parameters.items():
        _, default, when = rows[name]
        code = re.fullmatch(r"`([^`]*)`", default)
        assert (code[1] if code else default) == _shown(parameter), name
        assert when, f"{name}: say when to change it"


def test_the_reserved_concurrency_the_guide_counts_is_the_defaults_sum(
    guide: str, template: dict[str, Any]
) -> None:
    (said,) = re.findall(r"defaults reserve (\d[\d,]*) in all", guide)
    reserved = [
        int(p["Default"])
        for name, p in template["Parameters"].items()
        if name.endswith("ReservedConcurrency")
    ]
    assert int(said.replace(",", "")) == sum(reserved)


# --- the RunPod endpoint against the dispatch profiles and keep-hot --------------------------


def test_the_profile_table_gives_each_profiles_timeouts_and_window(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    rows = tables["dispatchprofile"].by_name()
    assert set(rows) == set(PROFILES)
    concurrency = int(_default(template, "WorkerConcurrency"))
    for name, profile in PROFILES.items():
        _, job, endpoint, grace, window = rows[name]
        assert ("default" in rows[name][0]) == (name == _default_profile(template)), name
        # The job's value is what applies (it overrides the endpoint's); the endpoint's must not
        # be shorter, or the console shows a limit that is not the one in force.
        assert _ints(job)[0] == profile.execution_timeout_s, name
        assert _ints(endpoint)[0] >= profile.execution_timeout_s, name
        assert _ints(grace)[0] == profile.queue_grace_s, name
        if profile.follow_workers_max:
            assert _ints(window) == [concurrency, profile.window_max], name
        else:  # a fixed window: only window / MAX_CONCURRENCY workers ever get work
            assert _ints(window) == [profile.window_max, profile.window_max // concurrency], name


def test_the_endpoint_execution_timeout_covers_the_default_profiles_jobs(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    cell = tables["setting"].by_name()["execution timeout"][1]
    profile = _default_profile(template)
    assert f"`{profile}`" in cell
    assert _ints(cell)[0] >= PROFILES[profile].execution_timeout_s


def test_the_idle_timeout_outlasts_the_keep_hot_ping_interval(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    # A warm worker gets one ping per tick: an idle timeout at or under the tick drops it
    # between two pings.
    cell = tables["setting"].by_name()["idle timeout"][1]
    assert min(_ints(cell)) > _tick_s(template)


def test_max_concurrency_is_worker_concurrency_and_the_workers_default(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    concurrency = int(_default(template, "WorkerConcurrency"))
    assert WorkerSettings.model_fields["max_concurrency"].default == concurrency
    cell = tables["setting"].by_name()["max concurrency"][1]
    assert _ints(cell) == [concurrency]
    variables = tables["variable"].by_name()
    assert _ints(variables["MAX_CONCURRENCY"][1]) == [concurrency]


def test_the_cold_start_budget_is_the_keep_hot_ping_ttl(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    cell = tables["setting"].by_name()["cold start"][1]
    assert _ints(cell) == [PING_TTL_S]
    assert PING_TTL_S <= PROFILES[_default_profile(template)].queue_grace_s


# --- the alarms ----------------------------------------------------------------------------


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
    }


def _dimension_target(props: dict[str, Any]) -> str:
    """What an alarm's one dimension names: a resource's logical id, or a plain value."""
    (dimension,) = props["Dimensions"]
    value = dimension["Value"]
    if isinstance(value, dict):
        return str(value.get("Ref") or value["Fn::GetAtt"][0])
    return str(value)


def test_the_alarm_table_is_exactly_the_templates_alarms(
    tables: dict[str, Table], template: dict[str, Any]
) -> None:
    rows = tables["alarm"].by_name()
    alarms = _alarms(template)
    assert set(rows) == set(alarms)
    for name, props in alarms.items():
        _, watches, fires = rows[name]
        for part in (props["Namespace"], props["MetricName"], _dimension_target(props)):
            assert f"`{part}`" in watches, f"{name}: {part}"
        numbers = _ints(fires)
        threshold = props["Threshold"]
        if isinstance(threshold, dict):  # a parameter: named, with its default
            parameter = threshold["Ref"]
            assert f"`{parameter}`" in fires, name
            assert int(_default(template, parameter)) in numbers, name
        else:
            assert int(threshold) in numbers, name
        assert props["Period"] // 60 in numbers, name
        if props["EvaluationPeriods"] > 1:
            assert {props["DatapointsToAlarm"], props["EvaluationPeriods"]} <= set(numbers), name


def test_the_guide_says_what_to_do_for_each_alarm(guide: str, template: dict[str, Any]) -> None:
    advised = set(re.findall(r"^- \*\*`(\w+)`\*\*", guide, re.MULTILINE))
    advised |= set(re.findall(r"^- \*\*`\w+`\*\*, \*\*`(\w+)`\*\*", guide, re.MULTILINE))
    assert advised == set(_alarms(template))


# --- the commands and links ----------------------------------------------------------------


HOTBATCH = r"(?:\.venv/bin/)?hotbatch\s"


def _hotbatch_commands(guide: str) -> list[list[str]]:
    """The arguments of every `hotbatch` command the guide shows: in its sh blocks
    (continuations joined) and in inline code, except placeholders such as `hotbatch keys …`."""
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", guide, re.DOTALL)).replace("\\\n", " ")
    parts = [part for line in blocks.splitlines() for part in re.split(r"&&|;|\|", line)]
    parts += re.findall(rf"`({HOTBATCH}[^`]+)`", guide)
    return [
        shlex.split(part, comments=True)[1:]
        for part in parts
        if re.match(rf"\s*{HOTBATCH}", part) and "…" not in part
    ]


def test_every_hotbatch_command_in_the_guide_exists_with_its_flags(guide: str) -> None:
    commands = _hotbatch_commands(guide)
    assert len(commands) >= 4  # keys, health, batches submit: the guide's own steps
    # Typer's own click: a group is what has subcommands.
    root: Any = typer.main.get_command(app)
    global_flags = _flags(root)
    for words in commands:
        command: Any = root
        path: list[str] = []
        for word in words:
            subcommands = getattr(command, "commands", None)
            if subcommands is None or word.startswith("-"):
                break
            assert word in subcommands, f"hotbatch {' '.join([*path, word])}: no such command"
            command = subcommands[word]
            path.append(word)
        assert getattr(command, "commands", None) is None, f"hotbatch {' '.join(path)}: which?"
        flags = _flags(command) | global_flags
        for word in words:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in flags, f"hotbatch {' '.join(path)}: no {word}"


def _flags(command: Any) -> set[str]:
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_stays_in_the_repository_and_resolves(guide: str) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", guide)
    assert links
    for link in links:
        assert not re.match(r"[a-z]+:", link), f"{link}: link only inside the repository"
        path, _, anchor = link.partition("#")
        target = (GUIDE.parent / path).resolve() if path else GUIDE
        assert target.is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, link
