"""Deterministic replies for the model simulator: who is calling (role) and what it answers."""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from lang_agent.llm import sim_intents
from lang_agent.llm.sim_intents import COLOUR_NAMES, device_status

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+")
# A streamed piece: one English word, or one or two CJK characters, with trailing punctuation
# and spaces. Every character falls in one alternative, so the pieces join back to the text.
_O = r"[^\sA-Za-z0-9\u3400-\u9fff\uf900-\ufaff]"
_PIECE = re.compile(
    rf"[A-Za-z0-9]+(?:['.][A-Za-z0-9]+)*{_O}*\s*|[\u3400-\u9fff\uf900-\ufaff]{{1,2}}{_O}*\s*"
    rf"|{_O}+\s*|\s+"
)
FILLERS = {
    "zh": ("好的，我查一下。", "稍等，我来操作。", "好的，马上就好。", "嗯，我看一下。"),
    "en": ("Sure, one moment. ", "OK, let me check. ", "Alright, just a second. ", "Sure, on it. "),
}
LOOP_SENTENCE = {"zh": "我们继续说下去，", "en": "and so we go on, "}
_ASK_NAME = re.compile(
    r"我叫什么|我的名字(?:是|叫)什么|我是谁|(?:知道|记得)我的名字|记得我叫"
    r"|what(?:'s| is) my name|(?:know|remember) my name|who am i\b",
    re.IGNORECASE,
)
_SAY_NAME = re.compile(
    r"(?:我叫|我的名字(?:是|叫))(?!什么)([^\s，,。.!！?？、]{1,12})"
    r"|\b(?:my name is|call me)\s+(?!what\b)([A-Za-z][\w'-]{0,30})",
    re.IGNORECASE,
)
# Tool name suffix -> (zh label, en label); the label names the tool in spoken answers.
_LABELS = {
    "audio_speaker_set_volume": ("调音量", "setting the volume"),
    "screen_set_brightness": ("调屏幕亮度", "setting the screen brightness"),
    "screen_set_theme": ("换主题", "changing the theme"),
    "lamp_turn_on": ("开台灯", "turning on the lamp"),
    "lamp_turn_off": ("关台灯", "turning off the lamp"),
    "lamp_get_state": ("查台灯", "checking the lamp"),
    "led_strip_set_all_color": ("设置灯带颜色", "setting the LED colour"),
    "light_set_rgb": ("设置灯光颜色", "setting the light colour"),
    "led_strip_set_brightness": ("调灯带亮度", "setting the LED brightness"),
    "battery_get_level": ("查电量", "checking the battery"),
    "get_device_status": ("查设备状态", "checking the device status"),
    "calculator": ("计算", "the calculation"),
    "current_time": ("查时间", "checking the time"),
}
# Tool name suffix -> what its success means, (zh, en); fields come from the call's arguments.
_SAID = {
    "audio_speaker_set_volume": ("音量已经调到{volume}了。", "the volume is now {volume}."),
    "screen_set_brightness": (
        "屏幕亮度已经调到{brightness}了。",
        "the screen brightness is now {brightness}.",
    ),
    "screen_set_theme": (
        "屏幕已经换成{theme_zh}主题了。",
        "the screen now uses the {theme} theme.",
    ),
    "lamp_turn_on": ("台灯已经打开了。", "the lamp is on."),
    "lamp_turn_off": ("台灯已经关上了。", "the lamp is off."),
    "led_strip_set_all_color": ("灯带已经换成{colour_zh}了。", "the LED strip is now {colour_en}."),
    "light_set_rgb": ("灯光已经换成{colour_zh}了。", "the light is now {colour_en}."),
    "led_strip_set_brightness": (
        "灯带亮度已经调到{level}了。",
        "the LED brightness is now {level}.",
    ),
    "calculator": ("结果是{result}。", "the result is {result}."),
    "current_time": ("现在是{result}。", "it is {result}."),
}


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the wire carries it


@dataclass(frozen=True)
class Reply:
    """What the simulated model says: text, tool calls, or both (text first)."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass
class Conversation:
    """The parts of a chat request the replies look at."""

    user_text: str = ""  # the latest user message
    earlier_user: list[str] = field(default_factory=list)
    # This turn's tool results (after the latest user message): (name, args, content).
    results: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    @property
    def lang(self) -> str:
        return "zh" if _CJK.search(self.user_text) else "en"


def text_of(content: Any) -> str:
    """Message content as plain text (a string, or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def language(messages: list[dict[str, Any]]) -> str:
    """zh if the latest user message has CJK characters, else en."""
    users = [m for m in messages if m.get("role") == "user"]
    return "zh" if users and _CJK.search(text_of(users[-1].get("content"))) else "en"


def read_conversation(messages: list[dict[str, Any]]) -> Conversation:
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    convo = Conversation()
    if last_user >= 0:
        convo.user_text = text_of(messages[last_user].get("content"))
    convo.earlier_user = [
        text_of(m.get("content")) for m in messages[:last_user] if m.get("role") == "user"
    ]
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for message in messages[last_user + 1 :]:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            try:
                args = json.loads(function.get("arguments") or "{}")
            except (TypeError, ValueError):
                args = {}
            calls[str(call.get("id"))] = (
                str(function.get("name")),
                args if isinstance(args, dict) else {},
            )
        if message.get("role") == "tool":
            name, args = calls.get(
                str(message.get("tool_call_id")), (message.get("name") or "tool", {})
            )
            convo.results.append((str(name), args, text_of(message.get("content"))))
    return convo


def route_function(tools: Any) -> str | None:
    """The name of the router's structured-output function: a `route` enum with chat and tool."""
    for tool in tools if isinstance(tools, list) else ():
        function = (tool or {}).get("function") or {}
        props = (function.get("parameters") or {}).get("properties") or {}
        enum = (props.get("route") or {}).get("enum") if isinstance(props, dict) else None
        if isinstance(enum, list) and {"chat", "tool"} <= set(enum):
            return str(function.get("name"))
    return None


def detect_role(body: dict[str, Any]) -> str:
    """router, chatty, tool or chat, from the request alone."""
    if route_function(body.get("tools")):
        return "router"
    model = str(body.get("model") or "").lower()
    if "chatty" in model or "filler" in model:
        return "chatty"
    return "tool" if body.get("tools") else "chat"


def reply_for(body: dict[str, Any], role: str) -> Reply:
    """The deterministic answer of the simulated model in `role` to a chat request."""
    convo = read_conversation(body["messages"])
    if role == "router":
        route = "tool" if sim_intents.detect(convo.user_text) else "chat"
        name = route_function(body.get("tools")) or "route"
        return Reply(tool_calls=(ToolCall(name, json.dumps({"route": route})),))
    if role == "chatty":
        # A phrase the instructions say was said already is not said again.
        told = " ".join(
            text_of(m.get("content")) for m in body["messages"] if m.get("role") == "system"
        )
        options = [o for o in FILLERS[convo.lang] if o.strip() not in told] or FILLERS[convo.lang]
        return Reply(options[zlib.crc32(convo.user_text.encode()) % len(options)])
    if role == "tool" and body.get("tool_choice") != "none":
        calls = _tool_calls(convo, body["tools"])
        if calls and body.get("parallel_tool_calls") is False:
            calls = calls[:1]
        if calls:
            return Reply(tool_calls=calls)
    if convo.results:
        return Reply(answer_from_results(convo.results, lang=convo.lang))
    if role == "tool":
        return Reply(
            "抱歉，我没有能做这件事的工具。"
            if convo.lang == "zh"
            else "Sorry, I don't have a tool for that."
        )
    return Reply(_chat(convo))


def _tool_calls(convo: Conversation, tools: list[Any]) -> tuple[ToolCall, ...]:
    offered = [
        str(((t or {}).get("function") or {}).get("name")) for t in tools if isinstance(t, dict)
    ]
    statuses = [c for n, _, c in convo.results if sim_intents.find_tool([n], "get_device_status")]
    status = device_status(statuses[-1]) if statuses else None
    planned = sim_intents.plan(
        sim_intents.detect(convo.user_text),
        offered=offered,
        status=status,
        status_seen=bool(statuses),
    )
    done = {(name, json.dumps(args, sort_keys=True)) for name, args, _ in convo.results}
    return tuple(
        ToolCall(name, json.dumps(args, ensure_ascii=False))
        for name, args in planned
        if (name, json.dumps(args, sort_keys=True)) not in done
    )


def _chat(convo: Conversation) -> str:
    zh = convo.lang == "zh"
    text = convo.user_text.strip()
    said = _SAY_NAME.search(text)
    if _ASK_NAME.search(text):
        names = [m[1] or m[2] for t in convo.earlier_user for m in _SAY_NAME.finditer(t)]
        if names:
            return f"我记得，你叫{names[-1]}。" if zh else f"I remember, your name is {names[-1]}."
        return "抱歉，我还不知道你的名字。" if zh else "Sorry, I don't know your name yet."
    if said:
        name = said[1] or said[2]
        return f"好的，我记住了，你叫{name}。" if zh else f"Nice to meet you, {name}."
    if not text:
        return "好的，请说。" if zh else "Sure, go ahead."
    return f"好的，你说的是「{text}」。" if zh else f'Sure, you said "{text}".'


def _suffix(name: str) -> str:
    return next((s for s in _LABELS if sim_intents.find_tool([name], s)), name)


def _failed(name: str, content: str) -> bool:
    text = content.strip()
    if text.startswith(("Error", "error", "错误")) or (text == "false" and "get_" not in name):
        return True
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and "error" in value


def _status_text(status: dict[str, Any], zh: bool) -> str | None:
    parts = []
    for section, key, zh_fmt, en_fmt in (
        ("audio_speaker", "volume", "音量是{}", "the volume is {}"),
        ("screen", "brightness", "屏幕亮度是{}", "the screen brightness is {}"),
        ("battery", "level", "电量是{}%", "the battery is at {}%"),
    ):
        value = (
            (status.get(section) or {}).get(key) if isinstance(status.get(section), dict) else None
        )
        if value is not None:
            parts.append((zh_fmt if zh else en_fmt).format(value))
    if not parts:
        return None
    return "现在" + "，".join(parts) + "。" if zh else ", ".join(parts) + "."


def _said(suffix: str, args: dict[str, Any], result: str, zh: bool) -> str | None:
    """What a successful call of a known tool means, as one sentence (None: say it generically)."""
    parsed = device_status(result)
    if suffix == "lamp_get_state" and parsed is not None and "power" in parsed:
        on = bool(parsed["power"])
        if zh:
            return "台灯现在开着。" if on else "台灯现在关着。"
        return f"the lamp is {'on' if on else 'off'}."
    if suffix == "battery_get_level":
        level = parsed.get("level") if parsed is not None else result.strip()
        return f"电池电量是{level}%。" if zh else f"the battery is at {level}%."
    if suffix == "get_device_status" and parsed is not None:
        return _status_text(parsed, zh)
    if suffix not in _SAID:
        return None
    rgb = tuple(args.get(k, args.get(k[0])) for k in ("red", "green", "blue"))
    colour_zh, colour_en = COLOUR_NAMES.get(rgb, ("新颜色", "the new colour"))  # type: ignore[arg-type]
    fields = _Fields(
        args,
        result=result.strip(),
        theme_zh="深色" if args.get("theme") == "dark" else "浅色",
        colour_zh=colour_zh,
        colour_en=colour_en,
    )
    return _SAID[suffix][0 if zh else 1].format_map(fields)


def answer_from_results(results: list[tuple[str, dict[str, Any], str]], *, lang: str) -> str:
    """The spoken answer once tools have run: one sentence per result, honest about failures."""
    zh = lang == "zh"
    setters = {"audio_speaker_set_volume", "screen_set_brightness"}
    later_set = any(_suffix(name) in setters for name, _, _ in results)
    sentences: list[tuple[bool, str]] = []
    for name, args, content in results:
        suffix = _suffix(name)
        label = _LABELS.get(suffix, (name, name))[0 if zh else 1]
        if _failed(name, content):
            sentences.append((False, f"{label}没有成功。" if zh else f"{label} did not work."))
            continue
        if suffix == "get_device_status" and later_set:
            continue  # the status was only the first step of a relative change
        text = _said(suffix, args, content, zh)
        if text is None:
            result = content.strip()
            text = f"{label}的结果是：{result}。" if zh else f"{label} returned: {result}."
        sentences.append((True, text))
    out: list[str] = []
    greeted = False
    for ok, text in sentences:
        if not ok:
            out.append(("抱歉，" if zh else "Sorry, ") + text)
        elif not greeted:
            out.append(("好的，" if zh else "OK, ") + text)
            greeted = True
        else:
            out.append(text if zh else text[:1].upper() + text[1:])
    return ("" if zh else " ").join(out)


def pieces(text: str) -> list[str]:
    """Text split as a model streams it: about one token (a word, 1–2 CJK chars) per piece."""
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    """Approximate tokens: CJK characters plus English words and numbers."""
    return len(_TOKEN.findall(text))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The request's token count: its message texts and tool-call arguments, plus 4 a message."""
    total = 0
    for message in messages:
        total += 4 + count_tokens(text_of(message.get("content")))
        for call in message.get("tool_calls") or []:
            function = (call or {}).get("function") or {}
            total += count_tokens(
                str(function.get("name", "")) + " " + str(function.get("arguments", ""))
            )
    return total
