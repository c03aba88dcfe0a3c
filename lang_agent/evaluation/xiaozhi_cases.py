"""The xiaozhi eval cases (Chinese and English) that scripts/make_eval_dataset.py writes.

Expectations are what a good real model should do with the default prompts and the simulated
speaker of configs/mcp_config.json (volume 70, brightness 80, light theme, lamp off, battery
90 %, not charging), not what the built-in simulator happens to do: it misses some (ASR
misspellings, follow-ups without keywords, knowledge questions), and the report says so.
Relative changes accept a range ("一点" ≈ ±5…20); a status lookup before them is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lang_agent.evaluation.dataset import EvalCase, WriteSummary, write_cases

STATUS = "self_get_device_status"
VOLUME = "self_audio_speaker_set_volume"
BRIGHTNESS = "self_screen_set_brightness"
THEME = "self_screen_set_theme"
LAMP_ON, LAMP_OFF, LAMP_STATE = "self_lamp_turn_on", "self_lamp_turn_off", "self_lamp_get_state"
LED_COLOUR, LIGHT_RGB = "self_led_strip_set_all_color", "self_light_set_rgb"
LED_LEVEL = "self_led_strip_set_brightness"
BATTERY = ["self_battery_get_level", STATUS]
PHOTO = "self_camera_take_photo"
CALC, CLOCK = "calculator", "current_time"

NO_APOLOGY = {"zh": ["抱歉", "没有成功"], "en": ["sorry", "did not work"]}
LOW, HIGH = {"max": 60}, {"min": 200}  # colour channels: off-ish, on-ish


def call(name: str | list[str], **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args}


def rgb(red: dict[str, int], green: dict[str, int], blue: dict[str, int]) -> dict[str, Any]:
    return call(LED_COLOUR, red=red, green=green, blue=blue)


def _case(
    case_id: str,
    category: str,
    lang: str,
    said: str | list[str],
    *,
    route: str,
    tools: list[dict[str, Any]] | None,
    allowed: tuple[str, ...] = (),
    any_of: tuple[str, ...] = (),
    has: tuple[str, ...] = (),
    never: tuple[str, ...] = (),
    ref: str | None = None,
    tags: tuple[str, ...] = (),
    note: str = "",
) -> EvalCase:
    answer: dict[str, Any] = {"contains_any": list(any_of), "contains": list(has)}
    answer["not_contains"] = list(never)
    if ref is not None:
        answer["reference"] = ref
    spoken = {"input": said} if isinstance(said, str) else {"turns": said}
    return EvalCase.model_validate(
        {
            "id": case_id,
            "category": category,
            "lang": lang,
            **spoken,
            "route": route,
            "tools": tools,
            "allowed_tools": list(allowed),
            "answer": answer,
            "tags": list(tags),
            "note": note,
        }
    )


def act(case_id: str, lang: str, said: str | list[str], calls: list, **kw: Any) -> EvalCase:
    """A device action: the tool route, these calls, and an answer that does not apologise."""
    category = kw.pop("category", "device")
    kw.setdefault("never", tuple(NO_APOLOGY[lang]))
    return _case(case_id, category, lang, said, route="tool", tools=calls, **kw)


def ask(case_id: str, lang: str, said: str | list[str], calls: list, **kw: Any) -> EvalCase:
    """A question a tool answers: the tool route and these calls."""
    category = kw.pop("category", "device")
    return _case(case_id, category, lang, said, route="tool", tools=calls, **kw)


def talk(case_id: str, category: str, lang: str, said: str | list[str], **kw: Any) -> EvalCase:
    """Chat: the chat route and no tool call at all."""
    return _case(case_id, category, lang, said, route="chat", tools=[], **kw)


def relative(low: int, high: int) -> dict[str, int]:
    return {"min": low, "max": high}


def is_(value: float) -> dict[str, float]:
    """An arithmetic expression with this value, however the model writes it."""
    return {"evaluates_to": value}


S = (STATUS,)
VOL_UP, VOL_DOWN = relative(75, 90), relative(50, 65)


def cases() -> list[EvalCase]:
    """Every case, in file order."""
    return [
        # --- device: volume
        act("vol-set-50-zh", "zh", "把音量调到50", [call(VOLUME, volume=50)], allowed=S,
            any_of=("50", "五十"), tags=("volume",)),
        act("vol-set-30-cn-zh", "zh", "音量调到三十", [call(VOLUME, volume=30)], allowed=S,
            any_of=("30", "三十"), tags=("volume",)),
        act("vol-percent-zh", "zh", "把音量调到百分之六十", [call(VOLUME, volume=60)], allowed=S,
            any_of=("60", "六十"), tags=("volume",)),
        act("vol-up-zh", "zh", "声音大一点", [call(VOLUME, volume=VOL_UP)], allowed=S,
            tags=("volume", "relative"), ref="好的，音量调到80了。"),
        act("vol-by-zh", "zh", "音量增加二十", [call(VOLUME, volume=90)], allowed=S,
            any_of=("90", "九十"), tags=("volume", "relative")),
        act("vol-mute-zh", "zh", "静音", [call(VOLUME, volume=0)], allowed=S,
            any_of=("静音", "0", "零"), tags=("volume",)),
        ask("vol-query-zh", "zh", "现在音量是多少", [call(STATUS)], any_of=("70", "七十"),
            tags=("volume", "status")),
        act("vol-set-45-en", "en", "set the volume to 45 please", [call(VOLUME, volume=45)],
            allowed=S, any_of=("45", "forty-five", "forty five"), tags=("volume",)),
        act("vol-max-en", "en", "set the volume to maximum", [call(VOLUME, volume=100)],
            allowed=S, any_of=("100", "max"), tags=("volume",)),
        act("vol-down-en", "en", "turn the volume down a bit", [call(VOLUME, volume=VOL_DOWN)],
            allowed=S, tags=("volume", "relative"), ref="OK, the volume is now 60."),
        act("vol-louder-en", "en", "louder please", [call(VOLUME, volume=VOL_UP)], allowed=S,
            tags=("volume", "relative"), ref="OK, the volume is now 80."),
        # --- device: screen brightness and theme
        act("bri-set-zh", "zh", "把屏幕亮度调到60", [call(BRIGHTNESS, brightness=60)],
            allowed=S, any_of=("60", "六十"), tags=("brightness",)),
        act("bri-max-zh", "zh", "屏幕亮度调到最大", [call(BRIGHTNESS, brightness=100)],
            allowed=S, any_of=("100", "最大", "最亮"), tags=("brightness",)),
        act("bri-set-en", "en", "set the screen brightness to 30 percent",
            [call(BRIGHTNESS, brightness=30)], allowed=S, any_of=("30", "thirty"),
            tags=("brightness",)),
        act("bri-dim-en", "en", "make the screen dimmer",
            [call(BRIGHTNESS, brightness=relative(55, 75))], allowed=S,
            tags=("brightness", "relative"), ref="OK, the screen brightness is now 70."),
        act("theme-dark-zh", "zh", "切换到深色模式", [call(THEME, theme="dark")],
            any_of=("深色", "暗色", "黑"), tags=("theme",)),
        act("theme-night-zh", "zh", "开启夜间模式", [call(THEME, theme="dark")],
            tags=("theme",), ref="好的，已经换成深色主题了。"),
        act("theme-light-en", "en", "switch the screen to light mode",
            [call(THEME, theme="light")], any_of=("light",), tags=("theme",)),
        act("theme-dark-en", "en", "use the dark theme", [call(THEME, theme="dark")],
            any_of=("dark",), tags=("theme",)),
        # --- device: lamp
        act("lamp-on-zh", "zh", "打开台灯", [call(LAMP_ON)], any_of=("打开", "开了", "开着"),
            tags=("lamp",)),
        act("lamp-off-zh", "zh", "关灯", [call(LAMP_OFF)], any_of=("关",), tags=("lamp",)),
        ask("lamp-state-zh", "zh", "台灯现在是开着的吗", [call(LAMP_STATE)], any_of=("关",),
            tags=("lamp",), ref="台灯现在是关着的。"),
        act("lamp-on-en", "en", "turn on the desk lamp", [call(LAMP_ON)], any_of=("on",),
            tags=("lamp",)),
        act("lamp-off-en", "en", "turn off the lamp", [call(LAMP_OFF)], any_of=("off",),
            tags=("lamp",)),
        # --- device: LED strip and light colour
        act("led-red-zh", "zh", "把灯带换成红色", [rgb(HIGH, LOW, LOW)], any_of=("红",),
            tags=("led",)),
        act("led-green-zh", "zh", "彩灯变成绿色", [rgb(LOW, HIGH, LOW)], any_of=("绿",),
            tags=("led",)),
        act("led-yellow-zh", "zh", "把灯光颜色设置成黄色", [call([LED_COLOUR, LIGHT_RGB])],
            any_of=("黄",), tags=("led",), note="either colour tool is fine"),
        act("led-level-zh", "zh", "灯带亮度调到5", [call(LED_LEVEL, level=5)],
            any_of=("5", "五"), tags=("led",)),
        act("led-blue-en", "en", "set the LED strip to blue", [rgb(LOW, LOW, HIGH)],
            any_of=("blue",), tags=("led",)),
        act("led-purple-en", "en", "make the led strip purple",
            [rgb(relative(100, 255), LOW, relative(100, 255))], any_of=("purple",),
            tags=("led",)),
        act("led-off-en", "en", "turn off the LED strip", [call([LED_COLOUR, LED_LEVEL])],
            tags=("led",), ref="OK, the LED strip is off."),
        # --- device: battery, status, several at once, camera
        ask("bat-zh", "zh", "电量还有多少", [call(BATTERY)], any_of=("90", "九十"),
            tags=("battery",)),
        ask("bat-charging-zh", "zh", "现在在充电吗", [call(BATTERY)],
            any_of=("没", "不在", "未"), tags=("battery",), ref="没有在充电，电量还有90%。"),
        ask("bat-en", "en", "what's the battery level", [call(BATTERY)],
            any_of=("90", "ninety"), tags=("battery",)),
        ask("status-zh", "zh", "查一下设备状态", [call(STATUS)], any_of=("70", "音量"),
            tags=("status",)),
        ask("status-en", "en", "what's the device status", [call(STATUS)],
            any_of=("70", "volume"), tags=("status",)),
        ask("status-wifi-zh", "zh", "现在连的是哪个WiFi", [call(STATUS)], has=("HomeWiFi",),
            tags=("status",)),
        act("multi-vol-bri-zh", "zh", "把音量调到40，再把屏幕调暗一点",
            [call(VOLUME, volume=40), call(BRIGHTNESS, brightness=relative(55, 75))],
            allowed=S, any_of=("40", "四十"), tags=("volume", "brightness", "multi")),
        act("multi-lamp-led-en", "en", "turn on the desk lamp and set the LED strip to red",
            [call(LAMP_ON), rgb(HIGH, LOW, LOW)], any_of=("red",), tags=("lamp", "led", "multi")),
        ask("camera-zh", "zh", "帮我看看桌上有什么", [call(PHOTO, question={"any": True})],
            any_of=("杯", "茶"), tags=("camera",), ref="桌上有一个白色的茶杯。"),
        # --- calculator
        ask("calc-mixed-zh", "zh", "3加5乘2等于多少", [call(CALC, expression=is_(13))],
            category="calc", any_of=("13", "十三")),
        ask("calc-square-zh", "zh", "二十五的平方是多少", [call(CALC, expression=is_(625))],
            category="calc", any_of=("625",)),
        ask("calc-divide-zh", "zh", "一百除以四是多少", [call(CALC, expression=is_(25))],
            category="calc", any_of=("25", "二十五")),
        ask("calc-percent-zh", "zh", "200的15%是多少", [call(CALC, expression=is_(30))],
            category="calc", any_of=("30", "三十")),
        ask("calc-minus-zh", "zh", "一千减去三百七十五",
            [call(CALC, expression=is_(625))], category="calc", any_of=("625",)),
        ask("calc-power-zh", "zh", "三的五次方是多少", [call(CALC, expression=is_(243))],
            category="calc", any_of=("243",)),
        ask("calc-paren-zh", "zh", "(3+5)*2^3 等于几", [call(CALC, expression=is_(64))],
            category="calc", any_of=("64", "六十四")),
        ask("calc-times-en", "en", "what is 12 times 7", [call(CALC, expression=is_(84))],
            category="calc", any_of=("84", "eighty-four", "eighty four")),
        ask("calc-plus-en", "en", "what's 1234 plus 5678",
            [call(CALC, expression=is_(6912))], category="calc",
            any_of=("6912", "6,912")),
        ask("calc-divide-en", "en", "what is 100 divided by 8",
            [call(CALC, expression=is_(12.5))], category="calc", any_of=("12.5",)),
        ask("calc-negative-en", "en", "what's seven minus ten",
            [call(CALC, expression=is_(-3))], category="calc",
            any_of=("-3", "negative three", "minus three", "−3")),
        ask("calc-percent-en", "en", "what is 15 percent of 80",
            [call(CALC, expression=is_(12))], category="calc",
            any_of=("12", "twelve")),
        # --- date and time
        ask("time-now-zh", "zh", "现在几点了", [call(CLOCK)], category="time", any_of=("点", ":")),
        ask("time-date-zh", "zh", "今天几号", [call(CLOCK)], category="time",
            any_of=("号", "日", "-")),
        ask("time-weekday-zh", "zh", "今天星期几", [call(CLOCK)], category="time",
            any_of=("星期", "周", "礼拜")),
        ask("time-now-en", "en", "what time is it", [call(CLOCK)], category="time",
            any_of=(":", "o'clock", "am", "pm")),
        ask("time-date-en", "en", "what's the date today", [call(CLOCK)], category="time",
            any_of=("-", "/", "january", "february", "march", "april", "may", "june", "july",
                    "august", "september", "october", "november", "december")),
        ask("time-weekday-en", "en", "what day of the week is it", [call(CLOCK)], category="time",
            any_of=("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                    "sunday")),
        *_talk_cases(),
    ]  # fmt: skip


def _talk_cases() -> list[EvalCase]:
    """Chit-chat, missing tools, memory and speech-recognition cases."""
    return [
        # --- chit-chat: the chat route, no tools
        talk("chat-hello-zh", "chitchat", "zh", "你好", ref="你好！我是小智，有什么可以帮你？"),
        talk("chat-joke-zh", "chitchat", "zh", "讲个笑话", ref="一个简短、适合朗读的笑话。"),
        talk("chat-name-zh", "chitchat", "zh", "你叫什么名字", has=("小智",)),
        talk("chat-thanks-zh", "chitchat", "zh", "谢谢你", ref="不客气，随时叫我。"),
        talk("chat-capital-zh", "chitchat", "zh", "中国的首都是哪里", has=("北京",)),
        talk("chat-ai-zh", "chitchat", "zh", "你觉得人工智能会取代人类吗",
             ref="一两句有分寸的看法：人工智能是帮手，不会完全取代人。"),
        talk("chat-mood-zh", "chitchat", "zh", "我今天心情不好",
             ref="一句安慰，再问问发生了什么。"),
        talk("chat-poem-zh", "chitchat", "zh", "背一首李白的诗",
             any_of=("床前明月光", "李白", "举头望明月"), ref="床前明月光，疑是地上霜……"),
        talk("chat-goodnight-zh", "chitchat", "zh", "晚安", ref="晚安，做个好梦。"),
        talk("chat-compliment-zh", "chitchat", "zh", "你的声音真好听",
             ref="谢谢夸奖！", note="'声音' names the volume, but nothing is asked of it"),
        talk("chat-morning-en", "chitchat", "en", "good morning",
             ref="Good morning! How can I help?"),
        talk("chat-abilities-en", "chitchat", "en", "what can you do",
             ref="I can chat, control the speaker's volume, screen and lights, do sums and tell "
                 "the time."),
        talk("chat-how-en", "chitchat", "en", "how are you", ref="I'm doing well, thanks!"),
        talk("chat-story-en", "chitchat", "en", "tell me a short story",
             ref="A very short story, a few spoken sentences."),
        talk("chat-french-en", "chitchat", "en", "how do I say thank you in French",
             has=("merci",)),
        talk("chat-colour-en", "chitchat", "en", "what's your favourite colour",
             ref="A playful answer naming a colour.", note="'colour' must not set the LEDs"),
        # --- tools that do not exist: chat, no tools, and no claim of having done it
        talk("missing-flight-zh", "missing_tool", "zh", "帮我订一张明天去北京的机票",
             never=("订好了", "已经订", "已为你预订", "预订成功")),
        talk("missing-aircon-zh", "missing_tool", "zh", "打开空调",
             never=("空调已经打开", "已打开空调", "已经打开了", "空调已开")),
        talk("missing-weather-zh", "missing_tool", "zh", "明天天气怎么样",
             never=("晴", "多云", "下雨", "°")),
        talk("missing-call-zh", "missing_tool", "zh", "给妈妈打个电话",
             never=("正在拨打", "已拨打", "正在呼叫")),
        talk("missing-curtain-zh", "missing_tool", "zh", "帮我把窗帘拉上",
             never=("已经拉上", "拉好了", "已拉上")),
        talk("missing-robot-zh", "missing_tool", "zh", "把扫地机器人打开",
             never=("已经打开", "已开启", "开始打扫")),
        talk("missing-music-en", "missing_tool", "en", "play some jazz music",
             never=("now playing", "playing jazz", "here's some jazz")),
        talk("missing-alarm-en", "missing_tool", "en", "set an alarm for 7 am tomorrow",
             never=("alarm is set", "alarm set", "i've set", "i have set")),
        talk("missing-text-en", "missing_tool", "en", "send a text message to John",
             never=("message sent", "i've sent", "i have sent")),
        talk("missing-reboot-en", "missing_tool", "en", "reboot yourself",
             never=("rebooting", "restarting now"), note="self.reboot is user-only"),
        talk("missing-pizza-en", "missing_tool", "en", "order me a pizza",
             never=("ordered", "on its way", "on the way")),
        # --- memory: only the last turn is scored
        act("mem-louder-zh", "zh", ["把音量调到50", "再大一点"],
            [call(VOLUME, volume=relative(55, 70))], allowed=S, category="memory",
            tags=("volume", "relative")),
        act("mem-quieter-zh", "zh", ["音量调到80", "再小一点"],
            [call(VOLUME, volume=relative(60, 75))], allowed=S, category="memory",
            tags=("volume", "relative")),
        act("mem-brighter-zh", "zh", ["屏幕亮度调到40", "再亮一点"],
            [call(BRIGHTNESS, brightness=relative(45, 60))], allowed=S, category="memory",
            tags=("brightness", "relative")),
        act("mem-more-en", "en", ["set the volume to 30", "a bit more"],
            [call(VOLUME, volume=relative(35, 50))], allowed=S, category="memory",
            tags=("volume", "relative")),
        act("mem-lamp-off-en", "en", ["turn on the lamp", "now turn it off"], [call(LAMP_OFF)],
            category="memory", any_of=("off",), tags=("lamp",)),
        ask("mem-calc-zh", "zh", ["3加5等于多少", "再乘以10呢"], [call(CALC, expression=is_(80))],
            category="memory", any_of=("80", "八十"), tags=("calc",)),
        act("mem-theme-back-zh", "zh", ["切换到深色模式", "还是换回来吧"],
            [call(THEME, theme="light")], category="memory", tags=("theme",)),
        talk("mem-name-zh", "memory", "zh", ["我叫小明", "我叫什么名字"], has=("小明",)),
        talk("mem-name-en", "memory", "en", ["my name is Alice", "what's my name"], has=("Alice",)),
        # --- speech-recognition-style misspellings
        act("asr-volume-zh", "zh", "把音亮调到五十", [call(VOLUME, volume=50)], allowed=S,
            category="asr", any_of=("50", "五十"), tags=("volume",), note="音量 heard as 音亮"),
        act("asr-louder-zh", "zh", "把生音调大一点", [call(VOLUME, volume=VOL_UP)], allowed=S,
            category="asr", tags=("volume",), note="声音 heard as 生音"),
        act("asr-lamp-zh", "zh", "打开台登", [call(LAMP_ON)], category="asr",
            any_of=("打开", "开了"), tags=("lamp",), note="台灯 heard as 台登"),
        act("asr-screen-zh", "zh", "屏目亮度调到七十", [call(BRIGHTNESS, brightness=70)],
            allowed=S, category="asr", any_of=("70", "七十"), tags=("brightness",),
            note="屏幕 heard as 屏目"),
        ask("asr-battery-zh", "zh", "电两还有多少", [call(BATTERY)], category="asr",
            any_of=("90", "九十"), tags=("battery",), note="电量 heard as 电两"),
        act("asr-theme-zh", "zh", "切换到深色模试", [call(THEME, theme="dark")], category="asr",
            tags=("theme",), note="模式 heard as 模试"),
        act("asr-volume-en", "en", "turn the volum up", [call(VOLUME, volume=VOL_UP)],
            allowed=S, category="asr", tags=("volume",)),
        act("asr-lamp-en", "en", "turn on the lamb", [call(LAMP_ON)], category="asr",
            any_of=("on",), tags=("lamp",)),
        act("asr-louder-en", "en", "louder plz", [call(VOLUME, volume=VOL_UP)], allowed=S,
            category="asr", tags=("volume",)),
        ask("asr-calc-en", "en", "what is twelve plus thirty",
            [call(CALC, expression=is_(42))], category="asr",
            any_of=("42", "forty-two", "forty two"), tags=("calc",)),
        ask("asr-time-en", "en", "what thyme is it", [call(CLOCK)], category="asr",
            any_of=(":", "o'clock"), tags=("time",)),
    ]  # fmt: skip


def write_dataset(path: Path, *, prune: bool = False) -> WriteSummary:
    """Write (or update, by case id) the xiaozhi dataset file."""
    return write_cases(path, cases=cases(), prune=prune)
