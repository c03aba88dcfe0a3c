"""Which client messages are new, trimming history to the context window, capping memory,
and what of it the router sees."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)
from langgraph.graph.message import add_messages

from lang_agent.agent.events import InputMessage
from lang_agent.agent.history import (
    client_dialogue,
    client_instructions,
    fit_window,
    remember,
    split_turn,
)
from lang_agent.agent.nodes import router_view
from lang_agent.errors import InvalidRequest
from lang_agent.llm.tokens import MESSAGE_OVERHEAD_TOKENS, estimate_tokens

XIAOZHI_DIALOGUE = (
    InputMessage("system", "你是小智"),
    InputMessage("user", "现在几点"),
    InputMessage(
        "assistant",
        tool_calls=(
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "self_audio_speaker_set_volume", "arguments": '{"volume":50}'},
            },
        ),
    ),
    InputMessage("tool", "true", tool_call_id="call_1"),
    InputMessage("assistant", "好的。"),
    InputMessage("user", "再大一点"),
)


def test_dialogue_converts_tool_calls_and_drops_system():
    dialogue = client_dialogue(XIAOZHI_DIALOGUE)
    assert [type(m) for m in dialogue] == [
        HumanMessage,
        AIMessage,
        ToolMessage,
        AIMessage,
        HumanMessage,
    ]
    assert dialogue[1].tool_calls[0]["args"] == {"volume": 50}
    assert client_instructions(XIAOZHI_DIALOGUE) == "你是小智"


def test_seed_on_new_thread_is_preamble_and_turn_but_existing_thread_takes_the_tail():
    dialogue = client_dialogue(XIAOZHI_DIALOGUE)
    preamble, turn = split_turn(dialogue, history="seed", thread_has_memory=False)
    assert preamble == dialogue[:4] and [m.content for m in turn] == ["再大一点"]
    preamble, tail = split_turn(dialogue, history="seed", thread_has_memory=True)
    assert preamble == [] and [m.content for m in tail] == ["再大一点"]
    assert split_turn(dialogue, history="append", thread_has_memory=True) == ([], dialogue)


def test_a_new_thread_s_turn_may_end_in_the_client_s_tool_round():
    dialogue = client_dialogue(XIAOZHI_DIALOGUE)[:3]  # 现在几点, a tool call, its result
    assert split_turn(dialogue, history="seed", thread_has_memory=False) == ([], dialogue)
    with pytest.raises(InvalidRequest):  # memory has its user message: nothing is new
        split_turn(dialogue, history="seed", thread_has_memory=True)


def test_no_user_message_is_refused():
    for history in ("append", "seed"):
        with pytest.raises(InvalidRequest):
            split_turn([AIMessage("hi")], history=history, thread_has_memory=False)


def test_bad_tool_call_arguments_become_empty():
    message = InputMessage(
        "assistant", tool_calls=({"id": "c", "function": {"name": "f", "arguments": "{{"}},)
    )
    assert client_dialogue([message])[0].tool_calls[0]["args"] == {}


def test_fit_window_keeps_newest_turns_within_budget():
    history = []
    for i in range(50):
        history += [HumanMessage(f"问题{i}" * 20), AIMessage(f"回答{i}" * 20)]
    history.append(HumanMessage("最后的问题"))
    fitted = fit_window(history, system="系统", window=1000, max_tokens=300)
    assert isinstance(fitted[0], SystemMessage)
    assert fitted[-1].content == "最后的问题"
    assert isinstance(fitted[1], HumanMessage)
    used = sum(estimate_tokens(m.content) + 4 for m in fitted)
    assert used + 300 <= 1000
    assert len(fitted) < len(history)


def test_fit_window_refuses_a_message_larger_than_the_window():
    with pytest.raises(InvalidRequest):
        fit_window([HumanMessage("字" * 5000)], system="s", window=1000, max_tokens=100)


def test_estimate_tokens_counts_cjk_per_character():
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("hello world!") == 3


def _cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u303f" or "\u3400" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef"


@given(
    st.text(alphabet=st.sampled_from("ab ,。你好！ｘ\u3000\u303f\u3400\u9fff\uff00\uffef\u2fff"))
)
def test_estimate_tokens_counts_every_cjk_character_once(text):
    cjk = sum(1 for ch in text if _cjk(ch))
    assert estimate_tokens(text) == cjk + (len(text) - cjk + 3) // 4


def _turns(count: int, *, tool: bool = False) -> list:
    """`count` turns with ids, as memory holds them; a tool turn is four messages."""
    messages = []
    for i in range(count):
        messages.append(HumanMessage(f"问题{i}", id=f"h{i}"))
        if tool:
            call = {"name": "clock", "args": {}, "id": f"c{i}"}
            messages.append(AIMessage("", tool_calls=[call], id=f"a{i}-call"))
            messages.append(ToolMessage("12:00", tool_call_id=f"c{i}", id=f"t{i}"))
        messages.append(AIMessage(f"回答{i}", id=f"a{i}"))
    return messages


def _saved(memory: list, turn: list, keep: int) -> list:
    return add_messages(memory, remember(memory, turn, keep=keep))


def test_memory_under_the_cap_only_grows():
    memory, turn = _turns(3), [HumanMessage("新问题"), AIMessage("新回答")]
    assert remember(memory, turn, keep=8) == turn
    assert _saved(memory, turn, keep=0) == [*memory, *turn]


def test_memory_over_the_cap_keeps_the_latest_whole_turns():
    memory = _turns(5)
    turn = [HumanMessage("新问题", id="hn"), AIMessage("新回答", id="an")]
    assert [m.id for m in _saved(memory, turn, keep=6)] == ["h3", "a3", "h4", "a4", "hn", "an"]


def test_memory_is_never_cut_inside_a_turn():
    memory = _turns(3, tool=True)  # 12 messages, 4 a turn
    turn = [HumanMessage("新问题", id="hn"), AIMessage("新回答", id="an")]
    kept = _saved(memory, turn, keep=8)  # room for 6 old ones: only the last whole turn fits
    assert [m.id for m in kept] == ["h2", "a2-call", "t2", "a2", "hn", "an"]


def test_a_turn_longer_than_the_cap_is_kept_whole():
    turn = _turns(1, tool=True)
    assert _saved(_turns(4), turn, keep=2) == turn


_ROLES = st.sampled_from(["user", "assistant", "tool call", "tool"])
_TEXT = st.text(alphabet="ab 你好", max_size=40)


def _message(role: str, text: str):
    match role:
        case "user":
            return HumanMessage(text)
        case "assistant":
            return AIMessage(text)
        case "tool call":
            return AIMessage("", tool_calls=[{"name": "play", "args": {"song": text}, "id": "c"}])
        case _:
            return ToolMessage(text, tool_call_id="c")


def _tokens(messages) -> int:
    """The estimate, message by message, as trim_messages' counter."""
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + estimate_tokens(message.content)
        for call in getattr(message, "tool_calls", None) or []:
            total += estimate_tokens(call["name"]) + estimate_tokens(json.dumps(call["args"]))
    return total


@given(
    history=st.lists(st.builds(_message, _ROLES, _TEXT), max_size=30),
    window=st.integers(min_value=0, max_value=1500),
)
def test_fit_window_keeps_what_langchains_trim_messages_keeps(history, window):
    budget = window - 50 - MESSAGE_OVERHEAD_TOKENS - estimate_tokens("系统")
    expected = trim_messages(
        history,
        max_tokens=max(budget, 0),
        token_counter=_tokens,
        strategy="last",
        start_on="human",
        allow_partial=False,
    )
    if not expected:
        with pytest.raises(InvalidRequest):
            fit_window(history, system="系统", window=window, max_tokens=50)
        return
    fitted = fit_window(history, system="系统", window=window, max_tokens=50)
    assert fitted[0] == SystemMessage("系统")
    assert [id(m) for m in fitted[1:]] == [id(m) for m in expected]


def _tool_turn(n: int) -> list:
    call = {"name": "get_weather", "args": {"city": "北京"}, "id": f"c{n}"}
    return [
        HumanMessage(f"问{n}"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("晴", tool_call_id=f"c{n}"),
        AIMessage([{"type": "text", "text": f"答{n}"}]),
    ]


def test_the_router_sees_the_latest_spoken_turns_as_plain_text():
    memory = [message for n in range(100) for message in _tool_turn(n)]  # 400 messages
    view = router_view([*memory, HumanMessage("问100")], keep=6)
    assert [(type(m), m.content) for m in view] == [
        (HumanMessage, "问98"), (AIMessage, "答98"),
        (HumanMessage, "问99"), (AIMessage, "答99"),
        (HumanMessage, "问100"),
    ]  # fmt: skip
    assert not any(m.tool_calls for m in view if isinstance(m, AIMessage))
    # It starts on a user message, and sees all there is of a short thread.
    assert [m.content for m in router_view(_tool_turn(0), keep=1)] == []
    assert [m.content for m in router_view(_tool_turn(0), keep=2)] == ["问0", "答0"]
    assert [m.content for m in router_view(_tool_turn(0), keep=9)] == ["问0", "答0"]
