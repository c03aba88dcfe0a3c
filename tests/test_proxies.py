"""Model calls behind an HTTP proxy: HTTPS_PROXY and friends pick the route, https goes through a
CONNECT tunnel, http in absolute form, credentials stay on the wire."""

from __future__ import annotations

import asyncio
import ssl

import httpx2
import openai
import psycopg
import pytest
import trustme

from lang_agent.llm.http1 import Http1Transport
from lang_agent.llm.proxies import Proxy, ProxyRoutes, parse_proxy
from tests.conftest import TEST_KEY
from tests.support import answering, proxying, raw_server, wait_until
from tests.test_http1 import sized

SQUID = Proxy("squid.corp", 3128, None)


@pytest.mark.parametrize(
    ("environ", "scheme", "host", "expected"),
    [
        ({"HTTPS_PROXY": "http://squid.corp:3128"}, "https", "api.moonshot.cn", SQUID),
        ({"HTTPS_PROXY": "http://squid.corp:3128"}, "http", "api.moonshot.cn", None),
        ({"HTTPS_PROXY": "http://other:1", "https_proxy": "squid.corp:3128"},
         "https", "a.b", SQUID),
        ({"ALL_PROXY": "http://squid.corp:3128"}, "http", "a.b", SQUID),
        # Clash and friends set a socks ALL_PROXY beside an http one: take the http one.
        ({"all_proxy": "socks5://127.0.0.1:7891", "https_proxy": "http://squid.corp:3128"},
         "https", "a.b", SQUID),
        ({"all_proxy": "socks5://127.0.0.1:7891", "https_proxy": "http://squid.corp:3128"},
         "http", "a.b", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": ".aliyuncs.com, moonshot.cn"},
         "https", "dashscope.aliyuncs.com", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": "moonshot.cn"},
         "https", "api.moonshot.cn", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": "moonshot.cn"},
         "https", "notmoonshot.cn", SQUID),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": "*"}, "https", "a.b", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128"}, "https", "127.0.0.1", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128"}, "https", "localhost", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128"}, "https", "::1", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": "[2001:db8::2], 10.0.0.1"},
         "https", "2001:db8::2", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": "[2001:db8::2], 10.0.0.1"},
         "https", "10.0.0.1", None),
        ({"HTTPS_PROXY": "http://squid.corp:3128", "NO_PROXY": "[2001:db8::2], 10.0.0.1"},
         "https", "10.0.0.2", SQUID),
    ],
)  # fmt: skip
def test_the_environment_picks_the_route(environ, scheme, host, expected):
    routes = ProxyRoutes.from_environment(environ)
    assert routes is not None
    assert routes.proxy_for(scheme, host) == expected


def test_no_usable_proxy_means_no_routes(caplog):
    assert ProxyRoutes.from_environment({}) is None
    assert ProxyRoutes.from_environment({"ALL_PROXY": "socks5://127.0.0.1:7891"}) is None
    assert "only http:// proxies are supported" in caplog.text


def test_credentials_become_a_header_and_never_a_string():
    proxy = parse_proxy("http://alice:p%40ss@squid.corp:3128")
    assert proxy.authorization == b"Basic YWxpY2U6cEBzcw=="  # alice:p@ss
    assert str(proxy) == "http://squid.corp:3128" and "alice" not in repr(str(proxy))
    assert str(parse_proxy("http://[::1]:3128")) == "http://[::1]:3128"
    assert parse_proxy("http://:3128") is None and parse_proxy("http://proxy:port") is None


def _tls_pair(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


async def test_https_goes_through_a_connect_tunnel_and_keeps_it_alive():
    server_tls, trusting = _tls_pair("model.test")
    upstream = await asyncio.start_server(
        answering(sized(b"one"), sized(b"two")), "127.0.0.1", 0, ssl=server_tls
    )
    seen: list[bytes] = []
    routes = {"model.test:443": upstream.sockets[0].getsockname()[1]}
    try:
        async with raw_server(proxying(routes, seen=seen)) as (proxy_url, accepted):
            port = httpx2.URL(proxy_url).port
            transport = Http1Transport(
                verify=trusting, proxies=ProxyRoutes(https=Proxy("127.0.0.1", port, None))
            )
            async with httpx2.AsyncClient(transport=transport) as client:
                first = await client.get("https://model.test/v1/models")
                second = await client.get("https://model.test/v1/models")
        assert (first.text, second.text) == ("one", "two")
        assert seen == [b"CONNECT model.test:443 HTTP/1.1"] and accepted == [1]
    finally:
        upstream.close()


async def test_http_goes_in_absolute_form_with_the_proxys_credentials():
    seen: list[bytes] = []
    async with raw_server(answering(sized(b"hi"))) as (upstream_url, _):
        routes = {"model.test:8000": httpx2.URL(upstream_url).port}
        secret = b"Basic YWxpY2U6c2VjcmV0"
        async with raw_server(proxying(routes, seen=seen, require=secret)) as (proxy_url, _):
            proxy = parse_proxy(f"http://alice:secret@127.0.0.1:{httpx2.URL(proxy_url).port}")
            transport = Http1Transport(proxies=ProxyRoutes(http=proxy))
            async with httpx2.AsyncClient(transport=transport) as client:
                response = await client.post("http://model.test:8000/v1/x?q=1", content=b"{}")
    assert response.text == "hi"
    assert seen == [b"POST http://model.test:8000/v1/x?q=1 HTTP/1.1"]
    # The credentials go on the wire only: the request (what capture records) has none.
    assert "proxy-authorization" not in response.request.headers


async def test_a_refused_tunnel_and_a_dead_proxy_are_clear_errors():
    seen: list[bytes] = []
    async with raw_server(proxying({}, seen=seen, require=b"Basic x")) as (proxy_url, _):
        port = httpx2.URL(proxy_url).port
        transport = Http1Transport(proxies=ProxyRoutes(https=Proxy("127.0.0.1", port, None)))
        async with httpx2.AsyncClient(transport=transport) as client:
            with pytest.raises(
                httpx2.ProxyError, match="refused the tunnel to model.test:443: 407"
            ):
                await client.get("https://model.test/v1/models")
    dead = Http1Transport(proxies=ProxyRoutes(https=Proxy("127.0.0.1", port, None)))
    async with httpx2.AsyncClient(transport=dead) as client:
        with pytest.raises(httpx2.ConnectError, match="through the proxy http://127.0.0.1"):
            await client.get("https://model.test/v1/models")


def test_a_server_behind_a_proxy_answers_through_it(
    live_server, simulator, background_loop, monkeypatch, pg_dsn, thread_id
):
    # The simulator under a name only the proxy knows: every model call must go through it.
    port = httpx2.URL(simulator.base_url).port
    seen: list[bytes] = []
    handler = proxying({f"sim.test:{port}": port}, seen=seen, require=b"Basic YWxpY2U6czNjcmV0")

    async def start() -> asyncio.Server:
        return await asyncio.start_server(handler, "127.0.0.1", 0)

    proxy = background_loop.run(start())
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv(
        "HTTP_PROXY", f"http://alice:s3cret@127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    )
    try:
        server = live_server(sim_url=f"http://sim.test:{port}/v1")
        monkeypatch.delenv("HTTP_PROXY")  # read at start; our client goes direct
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
        answer = client.chat.completions.create(
            model="lang-agent",
            messages=[{"role": "user", "content": "讲个笑话"}],
            extra_body={"thread_id": thread_id},
        )
        assert answer.choices[0].message.content
    finally:
        proxy.close()
    assert seen and all(
        line.startswith(b"POST http://sim.test:%d/v1/chat/completions " % port) for line in seen
    )

    def captured() -> list[tuple[str, str]]:
        with psycopg.connect(pg_dsn) as conn:
            sql = "SELECT url, request_header::text FROM llm_calls WHERE thread_id = %s"
            return conn.execute(sql, (thread_id,)).fetchall()

    rows = wait_until(captured)
    assert all(url.startswith(f"http://sim.test:{port}/") for url, _ in rows)
    assert not any("s3cret" in header or "YWxpY2U" in header for _, header in rows)
