#!/usr/bin/env python3
"""A business server's wxtoken reader in Python (redis-py: Debian's
`python3-redis`, or `pip install redis`).

Reads the access token wxtoken keeps in Redis with one GET, calls a WeChat
API with it and, when WeChat refuses the token (40001, 40014, 42001),
reports it the documented way (README, "Passive refresh"), waits for the
replacement and calls again. Prints one JSON line; exits 1 on failure.

    REDIS_URL=redis://127.0.0.1:6379 WXTOKEN_ID=oa-main python3 reader.py

Environment: REDIS_URL, WXTOKEN_ID (a credential id) or
WXTOKEN_COMPONENT_APPID + WXTOKEN_AUTHORIZER_APPID (an authorizer of a
third-party platform), WECHAT_API (default https://api.weixin.qq.com),
WXTOKEN_WAIT_MS (how long to wait for a replacement, default 10000).
Run by tests/e2e/readers.rs against live replicas and the simulator.
"""

import json
import os
import sys
import time
import urllib.parse
import urllib.request

import redis

REFUSED = {40001, 40014, 42001}


def call_wechat(api, token):
    """One WeChat API call with `token`; its errcode (0 on success)."""
    query = urllib.parse.urlencode({"access_token": token})
    with urllib.request.urlopen(f"{api}/cgi-bin/get_api_domain_ip?{query}", timeout=5) as resp:
        return json.load(resp).get("errcode", 0)


def report_refused(r, cred_id, refused):
    """Passive refresh: records the refused token ('-' if none was stored), wakes the refreshers."""
    r.set(f"wxtoken:{{{cred_id}}}:refresh_request:access_token", refused, px=600000)
    r.publish("wxtoken:requests", f"{cred_id} access_token")


def await_replacement(r, cred_id, refused, wait_ms):
    """Polls until a token other than `refused` is stored; None after `wait_ms`."""
    deadline = time.monotonic() + wait_ms / 1000
    while time.monotonic() < deadline:
        time.sleep(0.1)
        token = r.get(f"wxtoken:{{{cred_id}}}:access_token")
        if token is not None and token != refused:
            return token
    return None


def main():
    api = os.environ.get("WECHAT_API", "https://api.weixin.qq.com").rstrip("/")
    wait_ms = int(os.environ.get("WXTOKEN_WAIT_MS", "10000"))
    cred_id = os.environ.get("WXTOKEN_ID", "oa-main")
    component_appid = os.environ.get("WXTOKEN_COMPONENT_APPID")
    authorizer_appid = os.environ.get("WXTOKEN_AUTHORIZER_APPID")
    if component_appid and authorizer_appid:
        cred_id = f"authorizer/{component_appid}/{authorizer_appid}"

    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), decode_responses=True)
    token = r.get(f"wxtoken:{{{cred_id}}}:access_token")  # None: none stored right now
    refused = None
    errcode = None
    if token is None:
        refused = "-"
    else:
        errcode = call_wechat(api, token)
        if errcode in REFUSED:
            refused = token
    if refused is not None:
        report_refused(r, cred_id, refused)
        token = await_replacement(r, cred_id, refused, wait_ms)
        if token is None:
            sys.exit(f"reader.py: no new token for {cred_id} within {wait_ms} ms")
        errcode = call_wechat(api, token)
    if errcode != 0:
        sys.exit(f"reader.py: WeChat answered errcode {errcode}")
    print(json.dumps({
        "id": cred_id,
        "token_prefix": token[:8],
        "refused_prefix": None if refused is None else refused[:8],
        "refreshed": refused is not None,
        "errcode": errcode,
    }))


if __name__ == "__main__":
    try:
        main()
    except (redis.RedisError, OSError) as e:
        sys.exit(f"reader.py: {e}")
