"""The model simulator over real HTTP: roles, replies, wire format, auth, control endpoints, CLI."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from click.testing import CliRunner

from lang_agent.cli import main
from lang_agent.llm.sim import Simulator
from lang_agent.llm.sim_profile import Latency, SimProfile

ROUTE_TOOL = {
    "type": "function",
    "function": {
        "name": "RouteDecision",
        "description": "Choose how the assistant handles the user's latest message.",
        "parameters": {
            "type": "object",
            "properties": {"route": {"type": "string", "enum": ["chat", "tool"]}},
            "required": ["route"],
        },
    },
}


def tool(name: str, **props: str) -> dict:
    properties = {key: {"type": kind} for key, kind in props.items()}
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": properties}},
    }


DEVICE_TOOLS = [
    tool("self_get_device_status"),
    tool("self_audio_speaker_set_volume", volume="integer"),
    tool("self_lamp_turn_on"),
    tool("calculator", expression="string"),
    tool("current_time"),
]
STATUS = '{"audio_speaker":{"volume":70},"screen":{"brightness":80},"battery":{"level":90}}'


@pytest.fixture
async def sim():
    simulator = Simulator()
    await simulator.start(host="127.0.0.1", port=0)
    yield simulator
    await simulator.stop()


@pytest.fixture
def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def ask(client, messages, *, model: str = "sim-chat", **kwargs):
    reply = await client.chat.completions.create(model=model, messages=messages, **kwargs)
    return reply.choices[0]


async def stream(client, messages, *, model: str = "sim-chat", **kwargs) -> list:
    chunks = await client.chat.completions.create(
        model=model, messages=messages, stream=True, **kwargs
    )
    return [chunk async for chunk in chunks]


def text_of(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("你好", "好的，你说的是「你好」。"), ("hello there", 'Sure, you said "hello there".')],
)
async def test_chat_non_stream(client, text, expected):
    reply = await client.chat.completions.create(model="sim-chat", messages=user(text))
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("text", ["你好呀小智", "hello there, how are you"])
async def test_chat_stream_pieces_and_usage(client, text):
    chunks = await stream(client, user(text), stream_options={"include_usage": True})
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    assert len({c.id for c in chunks}) == 1
    body = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(body) > 3 and all(len(c.choices[0].delta.content) <= 12 for c in body)
    assert text in text_of(chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == len(body)
    assert usage.usage.prompt_tokens_details.cached_tokens == 0


async def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = await stream(client, user("你好"))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


async def test_wire_format_matches_qwen(sim):
    body = {"model": "sim-chat", "messages": user("你好"), "stream": True}
    async with httpx2.AsyncClient() as http:
        response = await http.post(f"{sim.base_url}/chat/completions", json=body)
    assert response.headers["x-request-id"] == response.headers["msh-request-id"]
    assert response.headers["server-timing"].startswith("inner; dur=")
    assert response.headers["msh-uid"] and response.headers["msh-gid"]
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunk = json.loads(events[1].removeprefix("data: "))
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["system_fingerprint"] is None and chunk["usage"] is None


@pytest.mark.parametrize(
    ("messages", "route"),
    [
        (user("你好"), "chat"),
        (user("我叫小明"), "chat"),
        (user("把音量调到30"), "tool"),
        (user("what time is it"), "tool"),
        (user("3加5乘2等于多少"), "tool"),
        (
            [
                *user("大声一点"),
                {"role": "assistant", "content": "好的，音量已经调到80了。"},
                *user("再大一点"),
            ],
            "tool",
        ),
    ],
)
async def test_router_decides_by_the_latest_user_message(client, messages, route):
    choice = await ask(
        client,
        messages,
        model="sim-router",
        tools=[ROUTE_TOOL],
        tool_choice={"type": "function", "function": {"name": "RouteDecision"}},
    )
    (call,) = choice.message.tool_calls
    assert call.function.name == "RouteDecision"
    assert json.loads(call.function.arguments) == {"route": route}


async def test_tool_call_streams_qwen_fragments_that_merge(client):
    chunks = await stream(client, user("把音量调到30"), model="sim-tool", tools=DEVICE_TOOLS)
    fragments = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert len(fragments) > 1
    assert fragments[0].id.startswith("call_") and fragments[0].function.name
    assert all(f.id == "" and f.function.name is None for f in fragments[1:])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    async with client.chat.completions.stream(
        model="sim-tool", messages=user("把音量调到30"), tools=DEVICE_TOOLS
    ) as events:
        final = await events.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "self_audio_speaker_set_volume"
    assert json.loads(call.function.arguments) == {"volume": 30}


async def test_tool_call_non_stream(client):
    choice = await ask(client, user("what is 12 times 7"), model="sim-tool", tools=DEVICE_TOOLS)
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls"
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "12*7"}


async def test_several_intents_give_parallel_calls(client):
    choice = await ask(client, user("打开台灯，把音量调到30"), model="sim-tool", tools=DEVICE_TOOLS)
    names = [call.function.name for call in choice.message.tool_calls]
    assert names == ["self_lamp_turn_on", "self_audio_speaker_set_volume"]


def after_tools(text: str, *calls: tuple[str, dict, str]) -> list[dict]:
    """A conversation where the tool model called `calls` and each returned its result."""
    messages = user(text)
    for i, (name, args, result) in enumerate(calls):
        messages.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": result})
    return messages


async def test_relative_volume_reads_status_first(client):
    first = await ask(client, user("大声一点"), model="sim-tool", tools=DEVICE_TOOLS)
    assert [c.function.name for c in first.message.tool_calls] == ["self_get_device_status"]

    status = ("self_get_device_status", {}, STATUS)
    second = await ask(
        client, after_tools("大声一点", status), model="sim-tool", tools=DEVICE_TOOLS
    )
    (call,) = second.message.tool_calls
    assert call.function.name == "self_audio_speaker_set_volume"
    assert json.loads(call.function.arguments) == {"volume": 80}

    done = after_tools(
        "大声一点", status, ("self_audio_speaker_set_volume", {"volume": 80}, "true")
    )
    final = await ask(client, done, model="sim-tool", tools=DEVICE_TOOLS)
    assert final.message.tool_calls is None
    assert final.message.content == "好的，音量已经调到80了。"


@pytest.mark.parametrize(
    ("text", "call", "expected"),
    [
        ("3加5乘2等于多少", ("calculator", {"expression": "3+5*2"}, "13"), "好的，结果是13。"),
        (
            "what is 12 times 7",
            ("calculator", {"expression": "12*7"}, "84"),
            "OK, the result is 84.",
        ),
        ("现在几点", ("current_time", {}, "2026-01-01 08:00"), "好的，现在是2026-01-01 08:00。"),
        (
            "把音量调到30",
            ("self_audio_speaker_set_volume", {"volume": 30}, "true"),
            "音量已经调到30了",
        ),
        ("打开台灯", ("self_lamp_turn_on", {}, "Error: device offline"), "抱歉，开台灯没有成功。"),
        ("turn on the lamp", ("self_lamp_turn_on", {}, '{"error":"x"}'), "Sorry, turning on"),
        ("查一下天气", ("weather", {"city": "北京"}, "晴"), "好的，weather的结果是：晴。"),
    ],
)
async def test_final_answer_from_tool_results(client, text, call, expected):
    for model, tools in (("sim-tool", DEVICE_TOOLS), ("sim-chat", None)):
        kwargs = {"tools": tools} if tools else {}
        choice = await ask(client, after_tools(text, call), model=model, **kwargs)
        assert expected in choice.message.content
        assert not {"异常", "错误", "502"} & set(choice.message.content)


async def test_tool_model_without_a_matching_tool(client):
    choice = await ask(client, user("给我讲个故事"), model="sim-tool", tools=DEVICE_TOOLS)
    assert choice.message.content == "抱歉，我没有能做这件事的工具。"
    offered = [tool("calculator", expression="string")]
    choice = await ask(client, user("turn on the lamp"), model="sim-tool", tools=offered)
    assert choice.message.content == "Sorry, I don't have a tool for that."


@pytest.mark.parametrize(("text", "lang"), [("把音量调到30", "zh"), ("turn it up please", "en")])
async def test_filler_is_one_short_sentence_not_said_twice(client, text, lang):
    messages = [{"role": "system", "content": "说一句过渡语"}, *user(text)]
    first = (await ask(client, messages, model="sim-chatty")).message.content
    again = text_of(await stream(client, messages, model="qwen-filler"))
    assert first == again
    assert first.endswith("。" if lang == "zh" else ". ")
    assert len(first) <= 30
    told = [{"role": "system", "content": f"说一句过渡语。你已经说过“{first.strip()}”"}]
    other = (await ask(client, [*told, *user(text)], model="sim-chatty")).message.content
    assert other != first and other.endswith("。" if lang == "zh" else ". ")


async def test_name_memory(client):
    history = [
        *user("我叫小明"),
        {"role": "assistant", "content": "好的，我记住了，你叫小明。"},
        *user("我叫什么名字"),
    ]
    assert (await ask(client, history)).message.content == "我记得，你叫小明。"
    assert "不知道" in (await ask(client, user("我叫什么名字"))).message.content
    english = [*user("my name is Ada"), *user("what is my name")]
    assert "Ada" in (await ask(client, english)).message.content
    assert "don't know" in (await ask(client, user("what's my name?"))).message.content


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_with_length(client, key):
    choice = await ask(client, user("请把这句话原样重复一遍给我听"), **{key: 3})
    assert choice.finish_reason == "length"
    assert choice.message.content == "好的，你说的是「"
    chunks = await stream(client, user("请把这句话原样重复一遍给我听"), **{key: 3})
    assert text_of(chunks) == "好的，你说的是「"
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_api_key_is_enforced():
    simulator = Simulator(api_key="sk-right")
    url = await simulator.start()
    try:
        wrong = openai.AsyncOpenAI(base_url=url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as failure:
            await ask(wrong, user("你好"))
        error = failure.value.body
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert failure.value.response.json()["request_id"]
        right = openai.AsyncOpenAI(base_url=url, api_key="sk-right", max_retries=0)
        assert (await ask(right, user("你好"))).message.content
    finally:
        await simulator.stop()


async def test_models_are_listed(client):
    models = await client.models.list()
    assert [m.id for m in models.data] == ["sim-router", "sim-chat", "sim-tool", "sim-chatty"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"messages": []}',
        b'{"messages": [{"role": "wizard", "content": "hi"}]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        b'{"messages": [{"role": "user", "content": 5}]}',
        b'{"messages": [{"role": "assistant", "content": "", "tool_calls": "x"}]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": ["calculator"]}',
        b"\xff\xfe",
    ],
)
async def test_malformed_request_is_400(sim, body):
    async with httpx2.AsyncClient() as http:
        response = await http.post(f"{sim.base_url}/chat/completions", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["request_id"]


async def test_unknown_path_is_404_and_wrong_method_405(sim):
    async with httpx2.AsyncClient() as http:
        missing = await http.get(f"{sim.base_url}/nothing")
        wrong = await http.get(f"{sim.base_url}/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert wrong.status_code == 405


async def test_keep_alive_serves_many_requests_on_one_connection(sim, client):
    for text in ("一", "二", "三"):
        assert text in (await ask(client, user(text))).message.content
    assert sim.stats["calls"]["chat"] == 3


async def test_profile_over_http(sim, client):
    root = sim.base_url.removesuffix("/v1")
    async with httpx2.AsyncClient() as http:
        response = await http.post(f"{root}/_sim/profile", json={"profile": "original"})
        assert response.json()["chat"] == {"ttft_ms": 350, "tokens_per_s": 60}
        response = await http.post(f"{root}/_sim/profile", json={"tool": {"ttft_ms": 5}})
        assert sim.profile.tool == Latency(ttft_ms=5, tokens_per_s=60)
        bad = await http.post(f"{root}/_sim/profile", json={"tool": {"ttft_ms": -1}})
        assert bad.status_code == 400
        await http.post(f"{root}/_sim/profile", json={"router": {"tokens_per_s": 1000}})
    assert (await ask(client, user("你好"))).message.content  # paced, still whole
    assert SimProfile.named("fast") == SimProfile()
    with pytest.raises(ValueError, match="unknown"):
        SimProfile.named("turbo")


def test_cli_help():
    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--profile", "--key", "8599", "127.0.0.1", "fast"):
        assert option in result.output
