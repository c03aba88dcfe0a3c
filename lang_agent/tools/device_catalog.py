"""The xiaozhi firmware's device tools as data: exact names, descriptions, schemas and behaviour.

Names, descriptions and schemas are copied from firmware `78/xiaozhi-esp32` (see
`reference/xiaozhi_device_tools.md` §2); schemas are generated the way `mcp_server.h` does it:
a property with a default is optional, every other one is listed in `required`, and a tool
without properties has no `required` key. Results are what the firmware sends as
`content[0].text`; argument errors carry the firmware's messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEVICE_ID_ARG = "device_id"
DEFAULT_DEVICE = "default"


class DeviceError(Exception):
    """A tool call the firmware would refuse; the message is the firmware's."""


@dataclass(frozen=True)
class Prop:
    """One tool argument, as `mcp_server.h` `Property` describes it."""

    type: Literal["integer", "string", "boolean"]
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.default is not None:
            out["default"] = self.default
        return out


@dataclass
class DeviceState:
    """What one simulated speaker remembers between calls."""

    volume: int = 70
    brightness: int = 80
    theme: str = "light"
    battery_level: int = 90
    charging: bool = False
    lamp_on: bool = False
    led_level: int = 4
    led_color: tuple[int, int, int] = (255, 255, 255)
    light_color: tuple[int, int, int] = (255, 255, 255)

    def status_json(self, features: frozenset[str]) -> str:
        """`GetDeviceStatusJson`: compact JSON, parts present only with the board feature."""
        status: dict[str, Any] = {"audio_speaker": {"volume": self.volume}}
        screen: dict[str, Any] = {}
        if "backlight" in features:
            screen["brightness"] = self.brightness
        if "theme" in features:
            screen["theme"] = self.theme
        if screen:
            status["screen"] = screen
        if "battery" in features:
            status["battery"] = {"level": self.battery_level, "charging": self.charging}
        status["network"] = {"type": "wifi", "ssid": "HomeWiFi", "signal": "strong"}
        status["chip"] = {"temperature": 45}
        return compact(status)


Result = str | bool | int
Handler = Callable[[DeviceState, dict[str, Any], frozenset[str]], Result]


@dataclass(frozen=True)
class ToolSpec:
    """One firmware tool: its wire definition and what it does to the device state."""

    name: str
    description: str
    feature: str
    handler: Handler
    props: Mapping[str, Prop] = field(default_factory=dict)
    user_only: bool = False

    def input_schema(self, *, device_id_arg: bool = False) -> dict[str, Any]:
        props = dict(self.props)
        if device_id_arg:
            props[DEVICE_ID_ARG] = Prop("string", default=DEFAULT_DEVICE)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: prop.schema() for name, prop in props.items()},
        }
        required = [name for name, prop in props.items() if prop.default is None]
        if required:
            schema["required"] = required
        return schema


def compact(value: Any) -> str:
    """JSON as cJSON_PrintUnformatted writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(result: Result) -> str:
    """The firmware's `ReturnValue` as text: bool → "true"/"false", int → digits."""
    if isinstance(result, bool):
        return "true" if result else "false"
    return str(result)


def parse_arguments(spec: ToolSpec, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Check arguments as `McpServer::DoToolCall` does; extra arguments are ignored."""
    values: dict[str, Any] = {}
    for name, prop in spec.props.items():
        raw = arguments.get(name)
        value: Any = None
        if prop.type == "integer" and isinstance(raw, int | float) and not isinstance(raw, bool):
            value = int(raw)
        elif prop.type == "string" and isinstance(raw, str):
            value = raw
        elif prop.type == "boolean" and isinstance(raw, bool):
            value = raw
        if value is None:
            if prop.default is None:
                raise DeviceError(f"Missing valid argument: {name}")
            value = prop.default
        if prop.minimum is not None and value < prop.minimum:
            raise DeviceError(f"Value is below minimum allowed: {prop.minimum}")
        if prop.maximum is not None and value > prop.maximum:
            raise DeviceError(f"Value exceeds maximum allowed: {prop.maximum}")
        values[name] = value
    return values


# --- handlers: (state, arguments, board features) -> firmware return value


def _status(state: DeviceState, _: dict[str, Any], features: frozenset[str]) -> Result:
    return state.status_json(features)


def _setter(attr: str, arg: str) -> Handler:
    def handler(state: DeviceState, args: dict[str, Any], _: frozenset[str]) -> Result:
        setattr(state, attr, args[arg])
        return True

    return handler


def _set_theme(state: DeviceState, args: dict[str, Any], _: frozenset[str]) -> Result:
    if args["theme"] not in ("light", "dark"):
        return False
    state.theme = args["theme"]
    return True


def _take_photo(_: DeviceState, args: dict[str, Any], __: frozenset[str]) -> Result:
    text = f"(simulated photo) A desk with a white cup of tea. Question: {args['question']}"
    return compact({"success": True, "text": text})


def _lamp(power: bool | None) -> Handler:
    def handler(state: DeviceState, _: dict[str, Any], __: frozenset[str]) -> Result:
        if power is None:
            return '{"power": true}' if state.lamp_on else '{"power": false}'
        state.lamp_on = power
        return True

    return handler


def _color(attr: str, keys: tuple[str, str, str]) -> Handler:
    def handler(state: DeviceState, args: dict[str, Any], _: frozenset[str]) -> Result:
        setattr(state, attr, tuple(args[k] for k in keys))
        return True

    return handler


def _battery(state: DeviceState, _: dict[str, Any], __: frozenset[str]) -> Result:
    return compact({"level": state.battery_level, "charging": state.charging})


def _system_info(_: DeviceState, __: dict[str, Any], ___: frozenset[str]) -> Result:
    return compact({"board": {"type": "lang-agent-sim"}, "firmware": {"version": "1.0.0-sim"}})


def _screen_info(_: DeviceState, __: dict[str, Any], ___: frozenset[str]) -> Result:
    return compact({"width": 240, "height": 240, "monochrome": False})


def _ok(_: DeviceState, __: dict[str, Any], ___: frozenset[str]) -> Result:
    return True


_BYTE = Prop("integer", minimum=0, maximum=255)

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "self.get_device_status",
        "Provides the real-time information of the device, including the current status of "
        "the audio speaker, screen, battery, network, etc.\nUse this tool for: \n1. Answering "
        "questions about current condition (e.g. what is the current volume of the audio "
        "speaker?)\n2. As the first step to control the device (e.g. turn up / down the volume "
        "of the audio speaker, etc.)",
        "common",
        _status,
    ),
    ToolSpec(
        "self.audio_speaker.set_volume",
        "Set the volume of the audio speaker. If the current volume is unknown, you must call "
        "`self.get_device_status` tool first and then call this tool.",
        "common",
        _setter("volume", "volume"),
        {"volume": Prop("integer", minimum=0, maximum=100)},
    ),
    ToolSpec(
        "self.screen.set_brightness",
        "Set the brightness of the screen.",
        "backlight",
        _setter("brightness", "brightness"),
        {"brightness": Prop("integer", minimum=0, maximum=100)},
    ),
    ToolSpec(
        "self.screen.set_theme",
        "Set the theme of the screen. The theme can be `light` or `dark`.",
        "theme",
        _set_theme,
        {"theme": Prop("string")},
    ),
    ToolSpec(
        "self.camera.take_photo",
        "Always remember you have a camera. If the user asks you to see something, use this "
        "tool to take a photo and then explain it.\nArgs:\n  `question`: The question that you "
        "want to ask about the photo.\nReturn:\n  A JSON object that provides the photo "
        "information.",
        "camera",
        _take_photo,
        {"question": Prop("string")},
    ),
    ToolSpec("self.lamp.get_state", "Get the power state of the lamp", "lamp", _lamp(None)),
    ToolSpec("self.lamp.turn_on", "Turn on the lamp", "lamp", _lamp(True)),
    ToolSpec("self.lamp.turn_off", "Turn off the lamp", "lamp", _lamp(False)),
    ToolSpec(
        "self.led_strip.get_brightness",
        "Get the brightness of the led strip (0-8)",
        "led_strip",
        lambda state, _, __: state.led_level,
    ),
    ToolSpec(
        "self.led_strip.set_brightness",
        "Set the brightness of the led strip (0-8)",
        "led_strip",
        _setter("led_level", "level"),
        {"level": Prop("integer", minimum=0, maximum=8)},
    ),
    ToolSpec(
        "self.led_strip.set_all_color",
        "Set the color of all leds.",
        "led_strip",
        _color("led_color", ("red", "green", "blue")),
        {"red": _BYTE, "green": _BYTE, "blue": _BYTE},
    ),
    ToolSpec(
        "self.light.set_rgb",
        "Set the RGB color of the light",
        "light",
        _color("light_color", ("r", "g", "b")),
        {"r": _BYTE, "g": _BYTE, "b": _BYTE},
    ),
    ToolSpec("self.battery.get_level", "获取机器人电池电量和充电状态", "battery", _battery),
    # User-only tools: hidden from the AI; listed only when a bridge asks withUserTools:true.
    ToolSpec(
        "self.get_system_info",
        "Get the system information",
        "common",
        _system_info,
        user_only=True,
    ),
    ToolSpec("self.reboot", "Reboot the system", "common", _ok, user_only=True),
    ToolSpec(
        "self.screen.get_info",
        "Information about the screen, including width, height, etc.",
        "backlight",
        _screen_info,
        user_only=True,
    ),
)

ALL_FEATURES = frozenset(
    {"common", "backlight", "theme", "camera", "lamp", "led_strip", "light", "battery"}
)
BOARDS: dict[str, frozenset[str]] = {
    "lang-agent-sim": ALL_FEATURES,
    "lang-agent-sim-nocam": ALL_FEATURES - {"camera"},
    "lang-agent-sim-minimal": frozenset({"common"}),
}
DEFAULT_BOARD = "lang-agent-sim"


def board_tools(board: str, *, user_tools: bool = False) -> list[ToolSpec]:
    """The tools a board advertises, common ones first, as the firmware orders them."""
    features = BOARDS[board]
    return [t for t in TOOLS if t.feature in features and (user_tools or not t.user_only)]
