"""Detectors: truncation, context pre-flight with auto models, and the windowed repeat detector."""

from __future__ import annotations

import uuid

import httpx2
from hypothesis import given
from hypothesis import strategies as st

from lang_agent.capture.detect import (
    RepeatConfig,
    RepeatDetector,
    _Track,
    estimate_prompt_tokens,
    preflight,
    truncation,
)
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.transport import CapturingTransport
from lang_agent.jsonwire import dumpb
from lang_agent.llm.context import calling
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.llm.tokens import estimate_tokens
from lang_agent.settings import CONFIGS
from tests.capture_fixtures import (
    capture_db,
    capture_dsn,
    capture_pg,
    capture_sim,
    eventually,
    rows_of_thread,
)

__all__ = ["capture_db", "capture_dsn", "capture_pg", "capture_sim"]

CATALOG = ModelCatalog.load(CONFIGS / "models.json")

CHINESE = (
    "智能音箱走进家庭已经有好几年了。最早的时候，人们买它主要是为了听歌和查天气，后来慢慢发现"
    "，它还能定闹钟、讲故事、控制家里的灯和空调。对老人和孩子来说，用说话代替按按钮，门槛一下"
    "子就降低了。不过，语音助手要真正好用，并不容易。首先是听得清。厨房里抽油烟机在响，客厅里"
    "电视开着，孩子在旁边跑来跑去，麦克风收到的声音非常杂乱。工程师们要用回声消除、波束成形和"
    "降噪算法，把用户的那句话从噪音里捞出来。其次是听得懂。同样是“打开灯”，有人说“把灯开一"
    "下”，有人说“屋里太暗了”，还有人只说一个“灯”。模型要结合上下文，猜出用户真正的意思。"
    "再次是回答得快。人和人聊天的时候，停顿超过一秒就会觉得别扭。音箱如果要等大模型把整段话都"
    "想好再开口，用户早就不耐烦了。所以现在常见的做法是流式输出：模型每生成几个字，就交给语音"
    "合成模块先念出来。为了让第一句话尽快出现，提示词里往往会要求模型先说一句简短的话，再展开"
    "细节。还有一个经常被忽略的问题，就是调用工具时的等待。比如用户问“明天上海会下雨吗”，助"
    "手需要先去查天气接口，这可能要花上两三秒。如果这段时间音箱一声不吭，用户会以为它没听见，"
    "于是再说一遍，结果请求叠在一起，场面更加混乱。比较聪明的设计是先说一句“好的，我查一下”"
    "，一边播放这句过渡语，一边在后台等结果。记忆也是让人又爱又恨的功能。用户希望助手记得自己"
    "喜欢什么音乐、家里有几个房间、孩子几点睡觉，但又担心这些信息被滥用。因此，数据应该尽量存"
    "放在用户自己能控制的地方，保存多久、谁能查看，都要说清楚。对于开发者来说，把每一次模型调"
    "用都记录下来，既能帮助排查问题，也意味着要认真对待隐私：密钥不能写进日志，敏感的请求头要"
    "打码，过期的数据要定期清理。说到排查问题，最让人头疼的往往是那些偶尔才出现的故障。模型偶"
    "尔会陷入重复，一句话翻来覆去地说；网络偶尔会在半路断开，回答只说了一半；上游服务偶尔会返"
    "回限流错误，让整个对话卡住。如果当时没有留下完整的记录，事后几乎无法复现。把请求、响应、"
    "每个数据块到达的时间都保存下来，再配上方便的查询工具，就能把“偶尔”变成“随时可以重放”"
    "。成本同样值得关注。大模型按照输入和输出的字数收费，一个家庭每天和音箱说上几十句话，看起"
    "来不多，乘以成千上万的设备就是一笔可观的开销。记录每次调用用了多少输入、多少输出、命中了"
    "多少缓存，再按照价格表算出费用，团队才能知道钱花在了哪里，哪些提示词可以再精简一些，哪些"
    "场景可以换成更便宜的小模型。最后，是体验上的细节。音箱的回答会被直接朗读，所以不能出现表"
    "格、代码或者奇怪的符号；句子要短，停顿要自然；遇到不知道的事情，老老实实说不知道，比编造"
    "一个听起来很像样的答案要好得多。孩子问恐龙为什么灭绝，老人问今天的菜价，年轻人让它放一首"
    "安静的歌，每一种请求背后，都是一个希望被认真对待的人。展望未来，语音助手可能会变得更加主"
    "动。它也许会在早上提醒你带伞，在你出门前告诉你路上堵不堵，在你做饭时一步一步念出菜谱。但"
    "无论功能怎么增加，可靠、及时、尊重隐私这几条原则都不会变。技术的价值，终究体现在那些平凡"
    "的日常时刻里：一句及时的提醒，一首恰好合心意的歌，一个被耐心回答的问题。"
)

ENGLISH = (
    "The first time I took the night train from Vienna to Venice, I expected to sleep through "
    "most of it. Instead I spent the hours by the window, watching small stations slide past "
    "under orange lamps, each one with its own bench, its own timetable, and usually one tired "
    "railway worker waving a flag at nobody in particular. Somewhere after Villach the valley "
    "narrowed and the river below turned silver in the moonlight. A man in the next compartment"
    " was reading a paperback about the history of salt, and every so often he laughed quietly,"
    " as if salt had done something unexpectedly clever in the fourteenth century. By three in "
    "the morning the corridor smelled of coffee from a thermos that someone had opened and then"
    " forgotten. At the border nobody checked anything; the train simply paused, sighed, and "
    "rolled on. When the lagoon finally appeared it was grey rather than blue, and the city "
    "rose out of it like a rumour that had decided to become true. I remember thinking that "
    "slow travel changes the shape of a trip: the journey stops being the gap between two "
    "places and becomes a place of its own. Later that week I met a boat builder in Castello "
    "who had repaired the same kind of wooden boat for forty years. He told me that every hull "
    "is slightly different, because the wood remembers where it grew, and a good builder "
    "listens before he cuts. His workshop had no sign, just a door painted the colour of old "
    "tea, and inside it smelled of pitch, sawdust and the sea. He worked slowly, measuring "
    "twice with a folding ruler that had lost half of its numbers, and when I asked how he "
    "managed without them he shrugged and said his hands knew the distances better than his "
    "eyes did. On the last evening the fog came in so thickly that the bell towers disappeared "
    "one after another, and the vaporetto crept along the Grand Canal with its horn sounding "
    "every few minutes like an anxious animal. I stood at the rail with a paper cup of mulled "
    "wine, listening to the water slap against the steps of palaces I could no longer see, and "
    "decided that getting lost was not a failure of planning but a different kind of arrival. "
    "The next morning the sky was washed clean, the fishermen were already back from the "
    "market, and the trains were running exactly on time, as if the night had never happened at"
    " all. Years later I still keep the ticket in a drawer, its ink faded to the colour of weak"
    " tea, and whenever I find it I remember the laughing reader, the silver river and the "
    "stubborn fog."
)


def feed(detector: RepeatDetector, text: str, *, step: int = 4) -> int | None:
    """Stream `text` in small deltas; the character count at the verdict, or None."""
    for start in range(0, len(text), step):
        if detector.feed(0, "content", text[start : start + step]):
            return start + step
    return None


def test_truncation_suggests_a_max_tokens_that_fits_the_window():
    verdict = truncation(
        "length", model="qwen-plus", prompt_tokens=1000, completion_tokens=50, catalog=CATALOG
    )
    assert verdict["suggested_max_tokens"] == 131072 - 1000
    stop = truncation(
        "stop", model="qwen-plus", prompt_tokens=1, completion_tokens=1, catalog=CATALOG
    )
    assert stop is None


def test_preflight_checks_the_window_and_picks_the_smallest_auto_model():
    small = {"model": "moonshot-v1-auto", "messages": [{"role": "user", "content": "你好"}]}
    assert preflight(small | {"max_tokens": 1000}, catalog=CATALOG)["resolved_model"] == (
        "moonshot-v1-8k"
    )
    medium = small | {"max_tokens": 10_000}
    assert preflight(medium, catalog=CATALOG)["resolved_model"] == "moonshot-v1-32k"
    assert preflight(small | {"max_tokens": 40_000}, catalog=CATALOG)["resolved_model"] == (
        "moonshot-v1-128k"
    )
    too_big = {
        "model": "moonshot-v1-8k",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "字" * 5000}],
    }
    verdict = preflight(too_big, catalog=CATALOG)
    assert verdict["fits"] is False and verdict["estimated_prompt_tokens"] > 5000
    assert preflight({"model": "unknown-model", "messages": []}, catalog=CATALOG) is None


_TEXT = st.text(alphabet=st.sampled_from('ab 1,.\n字你好。，😀"\\'), max_size=40)
_CALL = st.fixed_dictionaries(
    {"id": _TEXT, "type": st.just("function"),
     "function": st.fixed_dictionaries({"name": _TEXT, "arguments": _TEXT})}
)  # fmt: skip
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": _TEXT},
    optional={"tool_calls": st.lists(_CALL, max_size=2), "reasoning_content": _TEXT},
)


@given(st.lists(_MESSAGE, max_size=6), st.lists(_CALL, max_size=2))
def test_no_prompt_estimates_to_more_tokens_than_its_json_has_bytes(messages, tools):
    # Capture skips the estimate of a request that fits its window by its size (transport.py).
    body = {"model": "m", "messages": messages, **({"tools": tools} if tools else {})}
    assert estimate_prompt_tokens(body) <= len(dumpb(body))


def test_catalog_windows_costs_and_dated_names():
    assert CATALOG.window("moonshot-v1-8k") == 8192
    assert CATALOG.window("qwen-plus-2025-07-28") == 131072
    assert CATALOG.window("no-such-model") == CATALOG.default_window
    assert CATALOG.cost("qwen-plus", 1000, 1000, 0) == 0.0028
    assert CATALOG.cost("qwen-plus", 1000, 0, 1000) == 0.00016
    assert CATALOG.cost("no-such-model", 10, 10, 0) is None
    assert estimate_tokens("你好 world") == 2 + 2


def test_repeat_catches_a_loop_from_the_start():
    loop = "我觉得这个问题很有意思，让我们再想一想。" * 50
    assert feed(RepeatDetector(RepeatConfig()), loop) < 400


def test_repeat_catches_a_late_loop_soon_after_it_starts():
    text = ENGLISH + CHINESE + "The answer is 42, so let us check it once more. " * 60
    at = feed(RepeatDetector(RepeatConfig()), text)
    assert at is not None and at - len(ENGLISH + CHINESE) < 400


def test_repeat_catches_near_loops_whose_numbers_change():
    near = "".join(f"第{i}次尝试：结果还是{i * 7}，需要再算一遍。" for i in range(1, 80))
    assert feed(RepeatDetector(RepeatConfig()), CHINESE + near) is not None
    steps = "".join(f"Step {i}: check the value of item {i * 3} carefully.\n" for i in range(99))
    assert feed(RepeatDetector(RepeatConfig()), ENGLISH + steps) is not None


def test_no_false_alarm_on_long_normal_text():
    assert len(CHINESE) > 1200 and len(ENGLISH) > 2400
    for text in (CHINESE, ENGLISH, CHINESE + ENGLISH + CHINESE[:300]):
        assert feed(RepeatDetector(RepeatConfig()), text) is None
    listing = "".join(
        f"{i}. **{w}**：这是关于{w}的建议，先观察一段时间再决定怎么做。\n"
        for i, w in enumerate(["睡眠", "饮食", "运动", "阅读", "社交", "工作", "休息", "学习"], 1)
    )
    assert feed(RepeatDetector(RepeatConfig()), listing) is None


def judging_from_the_first_character(config: RepeatConfig) -> RepeatDetector:
    """A detector whose content track judges every character as it comes (no waiting)."""
    detector = RepeatDetector(config)
    track = detector.tracks[(0, "content")] = _Track(config)
    track.unjudged = None
    return detector


@given(
    st.sampled_from([CHINESE[:150], ENGLISH[:260], "好的 42, ", "ab12 ", "x"]),
    st.integers(0, 40),
    st.lists(st.integers(1, 9), min_size=1, max_size=30),
    st.sampled_from([RepeatConfig(), RepeatConfig(min_length=20, gram=5), RepeatConfig(gram=1)]),
)
def test_short_text_waits_unjudged_with_the_same_verdicts(prefix, periods, steps, config):
    """Text too short for a verdict is judged later in one go: every delta gets the verdict
    (or none) that judging each character as it came gives, and at the same place."""
    text = prefix + "重复的句子 again 7; " * periods
    waiting, eager = RepeatDetector(config), judging_from_the_first_character(config)
    at = 0
    for step in steps * (len(text) // sum(steps) + 1):
        piece, at = text[at : at + step], at + step
        if not piece:
            break
        assert waiting.feed(0, "content", piece) == eager.feed(0, "content", piece)
    assert waiting.output_tokens == eager.output_tokens


def test_an_answer_shorter_than_the_judged_length_is_not_walked_per_character():
    detector = RepeatDetector(RepeatConfig())
    feed(detector, CHINESE[:210])
    track = detector.tracks[(0, "content")]
    assert not track.grams and track.unjudged
    feed(detector, CHINESE[210:220])
    assert track.unjudged is None and len(track.grams) == 220 - 11


async def test_looping_simulated_stream_is_flagged_without_cut(capture_db, capture_sim):
    recorder = Recorder(dsn=capture_db.dsn)
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder, catalog=CATALOG)
    capture_sim.inject("loop", role="chat")
    thread = f"t-{uuid.uuid4().hex[:8]}"
    body = {
        "model": "sim-chat",
        "stream": True,
        "max_tokens": 400,
        "messages": [{"role": "user", "content": "讲个故事"}],
    }
    async with httpx2.AsyncClient(transport=transport, base_url=capture_sim.base_url) as client:
        with calling(thread_id=thread, node="chat"):
            async with client.stream("POST", "/chat/completions", json=body) as response:
                text = (await response.aread()).decode()
    await recorder.close()
    assert text.rstrip().endswith("data: [DONE]")  # not cut: detection is opt-in
    (row,) = await eventually(lambda: rows_of_thread(capture_db, thread))
    assert row["flags"]["repeat"]["cut"] is False
    assert row["finish_reason"] == "length" and "truncated" in row["flags"]
