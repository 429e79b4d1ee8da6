"""The root of `hotbatch`: --version, the global --api-url/--api-key, the errors a wrong URL
gives, the exit statuses in --help, and --json/-q on every command. Nothing is started: the
one request below goes to a closed port."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner, Result

from infra import cli
from infra.client import Deployment, DeploymentConfigError
from infra.output_cli import EXIT_MEANINGS

DEAD_URL = "http://127.0.0.1:1/v1"  # nothing listens on port 1 (tcpmux)


def hotbatch(*args: str, env: dict[str, str] | None = None, obj: Any = None) -> Result:
    return CliRunner().invoke(cli.app, list(args), env=env, obj=obj)


@pytest.fixture()
def no_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOTBATCH_API_URL", raising=False)
    monkeypatch.delenv("HOTBATCH_API_KEY", raising=False)


def test_version_prints_the_installed_package_version() -> None:
    shown = hotbatch("--version")
    assert shown.exit_code == 0
    assert shown.stdout == f"hotbatch {importlib.metadata.version('hotbatch')}\n"
    assert cli.main(["--version"]) == 0


def test_the_console_script_is_the_clis_main() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="hotbatch")
    assert script.load() is cli.main


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("not-a-url", "error: not-a-url is not an http(s) URL"),
        ("http://10.1.2.3:8000", "error: http://10.1.2.3:8000 does not end in /v1"),
        ("https://x.example/prod/", "error: https://x.example/prod/ does not end in /v1"),
    ],
)
def test_a_url_that_cannot_be_an_api_base_exits_2_naming_it_and_the_fix(
    no_deployment: None, url: str, said: str
) -> None:
    result = hotbatch("batches", "list", env={"HOTBATCH_API_URL": url, "HOTBATCH_API_KEY": "k"})
    assert result.exit_code == 2
    assert result.stderr.startswith(said) and result.stderr.count("\n") == 1
    assert "--api-url" in result.stderr and "HOTBATCH_API_URL" in result.stderr
    assert "Traceback" not in result.output


def test_a_url_without_v1_is_told_the_one_to_try(no_deployment: None) -> None:
    result = hotbatch("--api-url", "https://x.example/prod", "--api-key", "k", "files", "list")
    assert result.exit_code == 2 and "(try https://x.example/prod/v1)" in result.stderr


def test_a_dead_url_exits_3_naming_the_url_and_what_to_check(no_deployment: None) -> None:
    # The environment's URL, with the SDK's own retries, as a user's shell would run it.
    result = hotbatch("health", env={"HOTBATCH_API_URL": DEAD_URL, "HOTBATCH_API_KEY": "k"})
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"error: cannot reach {DEAD_URL}: connection refused; is the deployment up? "
        "check --api-url / HOTBATCH_API_URL\n"
    )


def test_api_url_beats_the_environment_and_a_handed_deployment(no_deployment: None) -> None:
    over_env = hotbatch(
        "--api-url",
        "http://10.1.2.3:8000",
        "batches",
        "get",
        "batch_x",
        env={"HOTBATCH_API_URL": "not-a-url", "HOTBATCH_API_KEY": "k"},
    )
    assert over_env.exit_code == 2 and "http://10.1.2.3:8000 does not end in /v1" in over_env.stderr
    handed = Deployment(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    over_handed = hotbatch("--api-url", DEAD_URL, "files", "list", obj=handed)
    assert over_handed.exit_code == 3 and f"cannot reach {DEAD_URL}" in over_handed.stderr


def test_flags_then_environment_name_the_deployment() -> None:
    env = {"HOTBATCH_API_URL": "http://env.example/v1/", "HOTBATCH_API_KEY": "env-key"}
    assert Deployment.resolve(environ=env) == Deployment("http://env.example/v1", "env-key")
    flagged = Deployment.resolve(url="https://flag.example/v1", key="flag-key", environ=env)
    assert (flagged.base_url, flagged.api_key) == ("https://flag.example/v1", "flag-key")
    with pytest.raises(DeploymentConfigError, match="--api-key or HOTBATCH_API_KEY"):
        Deployment.resolve(url="https://flag.example/v1", environ={})


def test_help_lists_every_exit_status() -> None:
    shown = CliRunner().invoke(cli.app, ["--help"], terminal_width=200)
    assert shown.exit_code == 0 and "Exit status" in shown.stdout
    for code in EXIT_MEANINGS:
        assert f" {int(code)}  " in shown.stdout
    assert "--api-url" in shown.stdout and "--version" in shown.stdout


def _leaves(command: Any, path: tuple[str, ...] = ()) -> dict[str, Any]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return {" ".join(path): command}
    found: dict[str, Any] = {}
    for name, sub in subcommands.items():
        found.update(_leaves(sub, (*path, name)))
    return found


def test_every_command_takes_json_and_all_but_local_up_take_quiet() -> None:
    commands = _leaves(typer.main.get_command(cli.app))
    assert {"files list", "files download", "batches get", "batches estimate"} <= set(commands)
    for name, command in commands.items():
        flags = {flag for param in command.params for flag in param.opts}
        assert "--json" in flags, name
        if name != "local up":  # a server: its output is its variables, not ids
            assert {"-q", "--quiet"} <= flags, name
