"""A sample DashScope SDK client, consuming the stream the way xiaozhi's AliBL provider does.

python fastapi_server/test_dashscope_client.py --url http://127.0.0.1:8588/api/ --key KEY
"""

import argparse
import sys
import uuid

import dashscope
from dashscope import Application


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8588/api/", help="base URL with /api/")
    parser.add_argument("--key", default="any", help="one of the server's FAST_AUTH_KEYS")
    parser.add_argument("--app-id", default="lang-agent", help="pipeline profile name")
    parser.add_argument("text", nargs="*", default=["你好，今天天气怎么样？"])
    args = parser.parse_args()
    dashscope.base_http_api_url = args.url
    responses = Application.call(
        api_key=args.key,
        app_id=args.app_id,
        session_id=uuid.uuid4().hex,
        messages=[{"role": "user", "content": " ".join(args.text)}],
        stream=True,
    )
    last = ""
    for response in responses:
        if response.status_code != 200:
            sys.stderr.write(
                f"\nerror {response.status_code} {response.code}: {response.message}\n"
            )
            return 1
        text = response.output.text or ""
        sys.stdout.write(text[len(last) :] if len(text) >= len(last) else text)
        sys.stdout.flush()
        last = text
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
