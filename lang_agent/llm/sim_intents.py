"""Intent parsing for the model simulator: which tools a spoken request needs, with what args."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

RELATIVE_STEP = 10  # "louder" / "大声一点" moves the volume (or brightness) by this much

_CN_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"〇": 0, "两": 2}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000}
_CN = "零〇一二两三四五六七八九十百千万"
# "一点" (a bit), "一下" (once) and friends are not numbers; possessive so "十一点" stays whole.
_CN_NUMBER = re.compile(rf"[{_CN}]++(?![点下些会样起直定般个])")
_CN_DECIMAL = re.compile(rf"([{_CN}]+)点([零〇一二两三四五六七八九]+)")
_PERCENT = re.compile(rf"百分之([{_CN}]+|\d+(?:\.\d+)?)")
_EN_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = dict(
    zip(
        "twenty thirty forty fifty sixty seventy eighty ninety".split(),
        range(20, 100, 10),
        strict=True,
    )
)
_EN_WORD = "|".join([*_EN_UNITS, *_EN_TENS, "hundred"])
_EN_NUMBER = re.compile(rf"\b(?:{_EN_WORD})(?:[\s-]+(?:and\s+)?(?:{_EN_WORD}))*\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# Keyword -> intent kind. One alternation, scanned left to right; at one position the first
# alternative wins, so the specific words ("灯带亮度", "light mode") come before the general ones.
_KINDS: list[tuple[str, str]] = [
    (
        "led",
        r"灯带(?:的?亮度)?|彩灯|颜色|\bcolou?r\b"
        r"|\bled(?: strip)?(?: brightness)?\b|\blight strip\b",
    ),
    (
        "theme",
        r"主题|深色|暗色|浅色|亮色|夜间模式|日间模式|黑暗模式|暗黑模式"
        r"|\b(?:dark|light) (?:mode|theme)\b|\btheme\b",
    ),
    (
        "brightness",
        r"屏幕亮度|亮度|调亮|调暗|亮一点|暗一点|亮一些|暗一些|\bbrightness\b|\bbrighter\b|\bdimmer\b",
    ),
    ("volume", r"音量|声音|大声|小声|静音|\bvolume\b|\blouder\b|\bquieter\b|\bsofter\b|\bmute\b"),
    ("lamp", r"台灯|开灯|关灯|灯|\blamps?\b|\blights?\b"),
    ("battery", r"电量|电池|充电|\bbattery\b|\bcharg(?:e|ing)\b"),
    ("status", r"设备状态|状态|\bstatus\b"),
    (
        "time",
        r"几点|时间|日期|几号|星期几|礼拜几|周几|\bwhat time\b|\bthe time\b|\bdate\b|\bwhat day\b",
    ),
    # A bare follow-up ("再大一点", "turn it up") means the volume unless another device is named.
    (
        "bare",
        r"再?大一?点|再?小一?点|响一点|轻一点|\bturn it (?:up|down)\b|\ba bit (?:more|less)\b",
    ),
]
_KEYWORDS = re.compile("|".join(f"(?P<{k}>{p})" for k, p in _KINDS), re.IGNORECASE)
_CLAUSE_END = re.compile(r"[，,。；;！!？?\n]")

_UP = re.compile(r"大|高|响|亮|加|增|\bup\b|louder|brighter|increase|raise|higher|more", re.I)
_DOWN = re.compile(r"小|低|轻|暗|降|减|\bdown\b|quieter|softer|dimmer|decrease|lower|less", re.I)
_BY = re.compile(r"(?:增加|减少|提高|降低|调高|调低|调大|调小)(?!到)|\bby\b", re.I)
_MAX = re.compile(r"最大|最高|最亮|\bmax(?:imum)?\b|\bfull\b", re.I)
_MIN = re.compile(r"静音|最小|最低|最暗|\bmute\b|\bmin(?:imum)?\b", re.I)
# "How loud is it": 音量多大 asks, where 大 alone would mean louder.
_ASK = re.compile(r"多少|多大|多高|多亮|几档|\bhow (?:loud|bright|high)\b", re.I)
_QUERY = re.compile(r"吗|？|\?|状态|是不是|有没有|\bis (?:the|it)\b|\bstate\b", re.I)
_OFF = re.compile(r"关|熄|\boff\b", re.I)
_ON = re.compile(r"开|点亮|\bon\b", re.I)
_DARK = re.compile(r"深|暗|黑|夜|\bdark\b|\bnight\b", re.I)
_LIGHT = re.compile(r"浅|亮|白|日间|\blight\b|\bday\b", re.I)
_COLOUR_TABLE = (
    ("红", "red", (255, 0, 0)),
    ("绿", "green", (0, 255, 0)),
    ("蓝", "blue", (0, 0, 255)),
    ("黄", "yellow", (255, 255, 0)),
    ("紫", "purple", (128, 0, 128)),
    ("白", "white", (255, 255, 255)),
    ("橙", "orange", (255, 165, 0)),
    ("粉", "pink", (255, 192, 203)),
    ("青", "cyan", (0, 255, 255)),
    ("黑", "black", (0, 0, 0)),
)
COLOURS = {word: rgb for zh, en, rgb in _COLOUR_TABLE for word in (zh, en)}
COLOUR_NAMES = {rgb: (f"{zh}色", en) for zh, en, rgb in _COLOUR_TABLE}
_COLOUR = re.compile("|".join(rf"\b{c}\b" if c.isascii() else c for c in COLOURS), re.I)

# Spoken arithmetic -> symbols; longest words first so "乘以" wins over "乘".
_OPS = {
    "加上": "+", "加": "+", "plus": "+", "减去": "-", "减": "-", "minus": "-",
    "乘以": "*", "乘": "*", "times": "*", "multiplied by": "*", "×": "*",
    "除以": "/", "除": "/", "divided by": "/", "over": "/", "÷": "/",
    "取余": "%", "模": "%", "modulo": "%", "mod": "%", "percent": "%",
    "左括号": "(", "右括号": ")", "（": "(", "）": ")",
    "to the power of": "^", "raised to": "^", "squared": "^2", "cubed": "^3",
}  # fmt: skip
_OP_WORDS = re.compile(
    "|".join(
        rf"\b{re.escape(w)}\b" if w.isascii() and w.isalpha() else re.escape(w)
        for w in sorted(_OPS, key=len, reverse=True)
    ),
    re.I,
)
_POWER = re.compile(r"的?(\d+(?:\.\d+)?)次方")
_SQUARE = re.compile(r"的?平方")
_CUBE = re.compile(r"的?立方")
_OF = re.compile(r"(?<=\d)的(?=\d)")  # "200的15%" -> 200*15%
_TIMES_X = re.compile(r"(?<=\d)\s*[xX]\s*(?=\d)")
_EXPR_RUN = re.compile(r"[\d.+\-*/%^()\s]+")
_BINARY = re.compile(r"[\d)%]\s*(?:\*\*|[+\-*/%^])\s*[\d(.]")


@dataclass(frozen=True)
class Intent:
    """One thing the user asked for: kind (volume, lamp, calc…), action and its value."""

    kind: str
    action: str
    value: Any = None


def cn_to_number(text: str) -> int | None:
    """Chinese numerals to an int: 三十 → 30, 一百零五 → 105, 二零二四 → 2024."""
    if not text or any(c not in _CN_DIGITS and c not in _CN_UNITS for c in text):
        return None
    if not any(c in _CN_UNITS for c in text):
        return int("".join(str(_CN_DIGITS[c]) for c in text))
    total, section, digit = 0, 0, None
    for char in text:
        if char in _CN_DIGITS:
            digit = _CN_DIGITS[char]
            continue
        unit = _CN_UNITS[char]
        if unit == 10_000:
            total += (section + (digit or 0)) * unit
            section = 0
        else:
            section += (1 if digit is None else digit) * unit
        digit = None
    return total + section + (digit or 0)


def _en_to_number(words: str) -> str:
    current = 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word in _EN_UNITS:
            current += _EN_UNITS.index(word)
        elif word in _EN_TENS:
            current += _EN_TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
    return str(current)


def with_digits(text: str) -> str:
    """Chinese and English numerals as Arabic digits; 百分之五十 → 50%."""
    text = _PERCENT.sub(lambda m: f"{cn_to_number(m[1]) if m[1][0] in _CN else m[1]}%", text)
    text = _CN_DECIMAL.sub(
        lambda m: f"{cn_to_number(m[1])}.{''.join(str(_CN_DIGITS[c]) for c in m[2])}", text
    )
    text = _CN_NUMBER.sub(lambda m: str(cn_to_number(m[0])), text)
    return _EN_NUMBER.sub(lambda m: _en_to_number(m[0]), text)


def expression(text: str) -> str | None:
    """The arithmetic expression in a spoken request ("3加5乘2等于多少" → "3+5*2"), if any."""
    text = with_digits(text)
    text = _POWER.sub(r"^\1", text)
    text = _CUBE.sub("^3", _SQUARE.sub("^2", text))
    text = _OP_WORDS.sub(lambda m: _OPS[m[0].lower()], text)
    text = _TIMES_X.sub("*", _OF.sub("*", text))
    best = ""
    for run in _EXPR_RUN.finditer(text):
        candidate = re.sub(r"\s+", "", run[0]).lstrip("+*/%^).").rstrip("+-*/^(.")
        if candidate.count("(") != candidate.count(")"):
            candidate = candidate.replace("(", "").replace(")", "")
        if _BINARY.search(candidate) and len(candidate) > len(best):
            best = candidate
    return best or None


def _number(segment: str) -> float | None:
    match = _NUMBER.search(segment)
    return float(match[0]) if match else None


def _first(segment: str, *patterns: re.Pattern[str]) -> int | None:
    """Index of the pattern whose match comes first in segment."""
    hits = [(m.start(), i) for i, p in enumerate(patterns) if (m := p.search(segment))]
    return min(hits)[1] if hits else None


def _level(kind: str, segment: str) -> Intent:
    """volume / brightness: an absolute value, a relative step, or a question."""
    number = _number(segment)
    if number is None and _ASK.search(segment):
        return Intent(kind, "query")
    # 亮度 is the noun, not "brighter": 把亮度调低 goes down.
    direction = _first(segment.replace("亮度", ""), _UP, _DOWN)
    sign = -1 if direction == 1 else 1
    if number is not None and _BY.search(segment):
        return Intent(kind, "relative", sign * int(number))
    if number is not None:
        return Intent(kind, "set", max(0, min(100, int(number))))
    if _MIN.search(segment):
        return Intent(kind, "set", 0)
    if _MAX.search(segment):
        return Intent(kind, "set", 100)
    if direction is not None:
        return Intent(kind, "relative", sign * RELATIVE_STEP)
    return Intent(kind, "query")


def _intent(kind: str, segment: str) -> Intent | None:
    if kind in ("volume", "brightness"):
        return _level(kind, segment)
    if kind == "theme":
        choice = _first(segment, _DARK, _LIGHT)
        return None if choice is None else Intent(kind, "set", ("dark", "light")[choice])
    if kind == "lamp":
        colour = _COLOUR.search(segment)
        if colour:
            return Intent("led", "colour", COLOURS[colour[0].lower()])
        if _QUERY.search(segment):
            return Intent(kind, "query")
        state = _first(segment, _OFF, _ON)
        return Intent(kind, ("off", "on")[state] if state is not None else "query")
    if kind == "led":
        colour = _COLOUR.search(segment)
        if colour:
            return Intent(kind, "colour", COLOURS[colour[0].lower()])
        number = _number(segment)
        if number is not None and re.search(r"亮|brightness", segment, re.I):
            return Intent(kind, "level", max(0, min(8, int(number))))
        state = _first(segment, _OFF, _ON)
        if state is not None:
            return Intent(kind, "colour", ((0, 0, 0), (255, 255, 255))[state])
        return None
    return Intent(kind, "query")  # battery, status, time


def detect(text: str) -> list[Intent]:
    """Every actionable intent in an utterance, in the order it was said."""
    digits = with_digits(text)
    hits = [(m.start(), m.end(), m.lastgroup or "") for m in _KEYWORDS.finditer(digits)]
    named = [hit for hit in hits if hit[2] != "bare"]
    hits = named or [(start, end, "volume") for start, end, _ in hits]
    intents: list[Intent] = []
    for i, (start, end, kind) in enumerate(hits):
        # The keyword's clause, cut where the neighbouring keywords begin and end.
        left = hits[i - 1][1] if i else 0
        right = hits[i + 1][0] if i + 1 < len(hits) else len(digits)
        before = _CLAUSE_END.split(digits[left:start])[-1]
        after = digits[start:right]
        cut = _CLAUSE_END.search(after, end - start)
        segment = before + (after[: cut.end()] if cut else after)
        intent = _intent(kind, segment)
        if intent is not None and intent not in intents:
            intents.append(intent)
    if any(i.kind != "status" for i in intents):
        intents = [i for i in intents if i.kind != "status" or i.action != "query"]
    calc = expression(text)
    if calc is not None:
        intents.append(Intent("calc", "query", calc))
    return intents


def find_tool(offered: Iterable[str], suffix: str) -> str | None:
    """The offered tool whose sanitised name ends with suffix (self_audio_speaker_set_volume)."""
    for name in offered:
        if name == suffix or (name.endswith(suffix) and name[-len(suffix) - 1] in "_.-"):
            return name
    return None


def device_status(content: str) -> dict[str, Any] | None:
    """A self.get_device_status result as a dict, or None when it is not that JSON."""
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "error" not in value else None


_LEVEL_TOOLS = {
    "volume": ("audio_speaker_set_volume", "volume", "audio_speaker"),
    "brightness": ("screen_set_brightness", "brightness", "screen"),
}
_QUERY_TOOLS = {
    ("lamp", "on"): "lamp_turn_on",
    ("lamp", "off"): "lamp_turn_off",
    ("lamp", "query"): "lamp_get_state",
    ("time", "query"): "current_time",
    ("status", "query"): "get_device_status",
    ("volume", "query"): "get_device_status",
    ("brightness", "query"): "get_device_status",
}


def plan(
    intents: list[Intent], *, offered: list[str], status: dict[str, Any] | None, status_seen: bool
) -> list[tuple[str, dict[str, Any]]]:
    """Tool calls for the intents, using only offered tools. `status` is this turn's parsed
    device status (None if absent or unreadable; `status_seen` says whether a result came)."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def call(suffix: str, args: dict[str, Any] | None = None) -> bool:
        name = find_tool(offered, suffix)
        if name is not None and (name, args or {}) not in calls:
            calls.append((name, args or {}))
        return name is not None

    for intent in intents:
        kind, action, value = intent.kind, intent.action, intent.value
        if kind in _LEVEL_TOOLS and action in ("set", "relative"):
            suffix, arg, section = _LEVEL_TOOLS[kind]
            if action == "set":
                call(suffix, {arg: value})
            elif status is not None:
                current = (status.get(section) or {}).get(arg)
                if isinstance(current, int | float):
                    call(suffix, {arg: max(0, min(100, int(current) + value))})
            elif not status_seen:
                call("get_device_status")
        elif kind == "theme":
            call("screen_set_theme", {"theme": value})
        elif kind == "led" and action == "colour":
            red, green, blue = value
            if not call("led_strip_set_all_color", {"red": red, "green": green, "blue": blue}):
                call("light_set_rgb", {"r": red, "g": green, "b": blue})
        elif kind == "led":
            call("led_strip_set_brightness", {"level": value})
        elif kind == "battery":
            if not call("battery_get_level"):
                call("get_device_status")
        elif kind == "calc":
            call("calculator", {"expression": value})
        elif (kind, action) in _QUERY_TOOLS:
            call(_QUERY_TOOLS[kind, action])
    return calls
