"""The simulator's speech parsing and text helpers: numerals, intents, expressions, pieces."""

from __future__ import annotations

import pytest

from lang_agent.llm.sim_intents import Intent, cn_to_number, detect, expression, plan
from lang_agent.llm.sim_replies import count_tokens, pieces

OFFERED = [
    "self_get_device_status",
    "self_audio_speaker_set_volume",
    "self_screen_set_brightness",
    "self_screen_set_theme",
    "self_lamp_turn_on",
    "self_lamp_turn_off",
    "self_lamp_get_state",
    "self_led_strip_set_all_color",
    "self_led_strip_set_brightness",
    "self_battery_get_level",
    "calculator",
    "current_time",
]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("三十", 30),
        ("一百", 100),
        ("十五", 15),
        ("一百零五", 105),
        ("两千", 2000),
        ("二零二四", 2024),
    ],
)
def test_chinese_numerals(text, number):
    assert cn_to_number(text) == number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3加5乘2等于多少", "3+5*2"),
        ("what is 12 times 7", "12*7"),
        ("what is twelve times seven", "12*7"),
        ("二的十次方", "2^10"),
        ("三点五乘二", "3.5*2"),
        ("200的百分之十五是多少", "200*15%"),
        ("(3+5)*2 是多少", "(3+5)*2"),
        ("100 divided by 4", "100/4"),
        ("你好", None),
        ("第3句话", None),
        ("我要加油", None),
    ],
)
def test_expression_from_speech(text, expected):
    assert expression(text) == expected


@pytest.mark.parametrize(
    ("text", "intents"),
    [
        ("把音量调到30", [Intent("volume", "set", 30)]),
        ("音量调到百分之五十", [Intent("volume", "set", 50)]),
        ("大声一点", [Intent("volume", "relative", 10)]),
        ("再大一点", [Intent("volume", "relative", 10)]),
        ("小声点", [Intent("volume", "relative", -10)]),
        ("louder", [Intent("volume", "relative", 10)]),
        ("静音", [Intent("volume", "set", 0)]),
        ("音量是多少", [Intent("volume", "query")]),
        ("亮度调到一百", [Intent("brightness", "set", 100)]),
        ("亮度再大一点", [Intent("brightness", "relative", 10)]),
        # 亮度's 亮 is not "brighter", and 多少 / 多大 ask: these turned the screen up.
        ("把亮度调低一点", [Intent("brightness", "relative", -10)]),
        ("屏幕亮度降低一点", [Intent("brightness", "relative", -10)]),
        ("现在亮度是多少", [Intent("brightness", "query")]),
        ("现在音量多大", [Intent("volume", "query")]),
        ("how loud is the volume now", [Intent("volume", "query")]),
        ("换成深色主题", [Intent("theme", "set", "dark")]),
        ("switch to light mode", [Intent("theme", "set", "light")]),
        ("打开台灯", [Intent("lamp", "on")]),
        ("turn off the lamp", [Intent("lamp", "off")]),
        ("台灯开着吗", [Intent("lamp", "query")]),
        ("把灯带调成红色", [Intent("led", "colour", (255, 0, 0))]),
        ("set the led strip to blue", [Intent("led", "colour", (0, 0, 255))]),
        ("把灯带的亮度调到五", [Intent("led", "level", 5)]),
        ("电量还有多少", [Intent("battery", "query")]),
        ("设备状态", [Intent("status", "query")]),
        ("今天几号", [Intent("time", "query")]),
        ("what time is it", [Intent("time", "query")]),
        ("打开台灯，把音量调到30", [Intent("lamp", "on"), Intent("volume", "set", 30)]),
        ("你好", []),
        ("我叫什么名字", []),
        ("慢一点", []),
    ],
)
def test_detect(text, intents):
    assert detect(text) == intents


def test_plan_uses_only_offered_tools_and_status():
    relative = [Intent("volume", "relative", 10)]
    assert plan(relative, offered=OFFERED, status=None, status_seen=False) == [
        ("self_get_device_status", {})
    ]
    status = {"audio_speaker": {"volume": 95}}
    assert plan(relative, offered=OFFERED, status=status, status_seen=True) == [
        ("self_audio_speaker_set_volume", {"volume": 100})
    ]
    assert plan(relative, offered=OFFERED, status=None, status_seen=True) == []
    battery = [Intent("battery", "query")]
    assert plan(battery, offered=OFFERED, status=None, status_seen=False) == [
        ("self_battery_get_level", {})
    ]
    assert plan(battery, offered=["self_get_device_status"], status=None, status_seen=False) == [
        ("self_get_device_status", {})
    ]
    lamp = [Intent("lamp", "on")]
    assert plan(lamp, offered=["calculator"], status=None, status_seen=False) == []


@pytest.mark.parametrize(
    "text", ["好的，你说的是「你好」。", 'Sure, you said "hello there".', "a  b\n c", "", "🙂 ok"]
)
def test_pieces_join_back(text):
    assert "".join(pieces(text)) == text


def test_pieces_are_small_and_tokens_counted():
    assert pieces("好的，我查一下，") == ["好的，", "我查", "一下，"]
    assert pieces("Sure, one moment, ") == ["Sure, ", "one ", "moment, "]
    assert count_tokens("好的 hello world 42") == 5
