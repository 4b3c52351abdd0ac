#!/usr/bin/env node
// A business server's wxtoken reader in Node.js (ioredis: `npm ci` here).
//
// Reads the access token wxtoken keeps in Redis with one GET, calls a WeChat
// API with it and, when WeChat refuses the token (40001, 40014, 42001),
// reports it the documented way (README, "Passive refresh"), waits for the
// replacement and calls again. Prints one JSON line; exits 1 on failure.
//
//   REDIS_URL=redis://127.0.0.1:6379 WXTOKEN_ID=oa-main node reader.js
//
// Environment: REDIS_URL, WXTOKEN_ID (a credential id) or
// WXTOKEN_COMPONENT_APPID + WXTOKEN_AUTHORIZER_APPID (an authorizer of a
// third-party platform), WECHAT_API (default https://api.weixin.qq.com),
// WXTOKEN_WAIT_MS (how long to wait for a replacement, default 10000).
// Run by tests/e2e/readers.rs against live replicas and the simulator.
'use strict';

const Redis = require('ioredis');

const REFUSED = new Set([40001, 40014, 42001]);

// One WeChat API call with `token`; its errcode (0 on success).
async function callWechat(api, token) {
  const url = `${api}/cgi-bin/get_api_domain_ip?access_token=${encodeURIComponent(token)}`;
  const reply = await (await fetch(url, { signal: AbortSignal.timeout(5000) })).json();
  return reply.errcode ?? 0;
}

// Passive refresh: records the refused token ('-' if none was stored), wakes the refreshers.
async function reportRefused(redis, id, refused) {
  await redis.set(`wxtoken:{${id}}:refresh_request:access_token`, refused, 'PX', 600000);
  await redis.publish('wxtoken:requests', `${id} access_token`);
}

// Polls until a token other than `refused` is stored; null after `waitMs`.
async function awaitReplacement(redis, id, refused, waitMs) {
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const token = await redis.get(`wxtoken:{${id}}:access_token`);
    if (token !== null && token !== refused) return token;
  }
  return null;
}

async function main() {
  const api = (process.env.WECHAT_API || 'https://api.weixin.qq.com').replace(/\/+$/, '');
  const waitMs = Number(process.env.WXTOKEN_WAIT_MS || 10000);
  let id = process.env.WXTOKEN_ID || 'oa-main';
  const componentAppid = process.env.WXTOKEN_COMPONENT_APPID;
  const authorizerAppid = process.env.WXTOKEN_AUTHORIZER_APPID;
  if (componentAppid && authorizerAppid) id = `authorizer/${componentAppid}/${authorizerAppid}`;

  const redis = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
  try {
    let token = await redis.get(`wxtoken:{${id}}:access_token`); // null: none stored right now
    let refused = null;
    let errcode;
    if (token === null) {
      refused = '-';
    } else {
      errcode = await callWechat(api, token);
      if (REFUSED.has(errcode)) refused = token;
    }
    if (refused !== null) {
      await reportRefused(redis, id, refused);
      token = await awaitReplacement(redis, id, refused, waitMs);
      if (token === null) throw new Error(`no new token for ${id} within ${waitMs} ms`);
      errcode = await callWechat(api, token);
    }
    if (errcode !== 0) throw new Error(`WeChat answered errcode ${errcode}`);
    console.log(JSON.stringify({
      id,
      token_prefix: token.slice(0, 8),
      refused_prefix: refused === null ? null : refused.slice(0, 8),
      refreshed: refused !== null,
      errcode,
    }));
  } finally {
    redis.disconnect();
  }
}

main().catch((e) => {
  console.error(`reader.js: ${e.message}`);
  process.exitCode = 1;
});
