"""The agents registry: built-in agents, and the agents of THREADLOG_AGENTS_FILE."""

from pathlib import Path

import pytest
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models.test import TestModel

from threadlog.infra.agents.registry import AgentRegistry, load_specs
from threadlog.infra.runs.recorder import call_args
from threadlog.infra.settings import Settings, SettingsError

EXTRACTOR = """
[[agents]]
name = "extractor"
description = "Pulls a person out of text"
model = "test"
system_prompt = "Extract the person."
tools = ["calculator"]
model_settings = { temperature = 0.2 }
price = { input_per_million = 0.5, output_per_million = 1.5 }

[agents.output_schema]
type = "object"
required = ["name"]
properties = { name = { type = "string" }, age = { type = "integer" } }
"""


def agents_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return path


def test_without_a_file_the_builtin_agents_exist() -> None:
    registry = AgentRegistry.build(Settings())
    assert [agent.spec.name for agent in registry] == ["assistant", "tools-demo"]


def test_the_default_agent_takes_its_name_model_and_prompt_from_settings() -> None:
    settings = Settings(agent="helper", model="test", system_prompt="Be brief.")
    default = AgentRegistry.build(settings).get("helper")
    assert default is not None
    assert (default.model_name, default.spec.system_prompt) == ("test", "Be brief.")
    assert default.spec.tools == [] and default.spec.output_type == "text"


def test_the_tools_demo_agent_has_every_builtin_tool() -> None:
    tools_demo = AgentRegistry.build(Settings()).get("tools-demo")
    assert tools_demo is not None
    assert tools_demo.spec.tools == ["calculator", "current_time", "report_progress"]


def test_a_file_adds_agents_with_all_their_fields(tmp_path: Path) -> None:
    settings = Settings(agents_file=agents_file(tmp_path, EXTRACTOR))
    extractor = AgentRegistry.build(settings).get("extractor")
    assert extractor is not None
    spec = extractor.spec
    assert (spec.description, spec.model, spec.system_prompt) == (
        "Pulls a person out of text",
        "test",
        "Extract the person.",
    )
    assert spec.tools == ["calculator"] and spec.model_settings == {"temperature": 0.2}
    assert spec.output_type == "structured" and spec.output_schema is not None
    assert spec.output_schema["required"] == ["name"]
    assert spec.price is not None and spec.price.cost(2_000_000, 1_000_000) == 2.5


def test_a_file_agent_without_a_model_uses_the_configured_model(tmp_path: Path) -> None:
    path = agents_file(tmp_path, '[[agents]]\nname = "plain"\n')
    registry = AgentRegistry.build(Settings(agents_file=path, model="test"))
    assert registry.model_of("plain") == "test"


def test_a_file_agent_replaces_a_builtin_agent_of_the_same_name(tmp_path: Path) -> None:
    path = agents_file(tmp_path, '[[agents]]\nname = "assistant"\ndescription = "mine"\n')
    assistant = AgentRegistry.build(Settings(agents_file=path)).get("assistant")
    assert assistant is not None and assistant.spec.description == "mine"


def test_an_injected_model_replaces_every_agents_model(tmp_path: Path) -> None:
    registry = AgentRegistry.build(Settings(), TestModel(model_name="fake"))
    assert {agent.model_name for agent in registry} == {"fake"}


def test_the_agents_file_setting_is_read_from_the_environment(tmp_path: Path) -> None:
    path = agents_file(tmp_path, EXTRACTOR)
    assert Settings.from_env({"THREADLOG_AGENTS_FILE": str(path)}).agents_file == path


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[[agents]]\nname = ", "THREADLOG_AGENTS_FILE"),
        ('[[agents]]\nname = "a"\ntools = "calculator"\n', "agents[0].tools"),
        ('[[agents]]\nname = "a"\ncolour = "red"\n', "colour"),
        ('[[agents]]\nname = "a"\n[[agents]]\nname = "a"\n', "defined twice"),
        ('[[agents]]\nname = "a"\ntools = ["shell"]\n', "unknown tools ['shell']"),
        ('[[agents]]\nname = "a b"\n', "agent name 'a b'"),
        ('[[agents]]\nname = "a"\nmodel_settings = { warmth = 1 }\n', "unknown model_settings"),
        ('[[agents]]\nname = "a"\noutput_schema = { type = "string" }\n', "type object"),
        ('[[agents]]\nname = "a"\nprice = { input_per_million = 1 }\n', "output_per_million"),
        ('[[agents]]\nname = "a"\nmodel = "no-such-provider:x"\n', "'no-such-provider:x'"),
    ],
)
def test_a_bad_agents_file_is_a_settings_error_that_says_what_is_wrong(
    tmp_path: Path, text: str, complaint: str
) -> None:
    settings = Settings(agents_file=agents_file(tmp_path, text))
    with pytest.raises(SettingsError) as raised:
        AgentRegistry.build(settings)
    assert complaint in str(raised.value)


def test_a_missing_agents_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read it"):
        load_specs(tmp_path / "absent.toml")


def test_tool_call_args_that_are_not_json_are_kept_as_raw_text() -> None:
    assert call_args(ToolCallPart("calculator", '{"expression": "1+')) == '{"expression": "1+'
    assert call_args(ToolCallPart("calculator", '{"expression": "1+1"}')) == {"expression": "1+1"}
