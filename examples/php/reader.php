<?php
// A business server's wxtoken reader in PHP (phpredis: Debian's `php-redis`).
//
// Reads the access token wxtoken keeps in Redis with one GET, calls a WeChat
// API with it and, when WeChat refuses the token (40001, 40014, 42001),
// reports it the documented way (README, "Passive refresh"), waits for the
// replacement and calls again. Prints one JSON line; exits 1 on failure.
//
//   REDIS_URL=redis://127.0.0.1:6379 WXTOKEN_ID=oa-main php reader.php
//
// Environment: REDIS_URL, WXTOKEN_ID (a credential id) or
// WXTOKEN_COMPONENT_APPID + WXTOKEN_AUTHORIZER_APPID (an authorizer of a
// third-party platform), WECHAT_API (default https://api.weixin.qq.com),
// WXTOKEN_WAIT_MS (how long to wait for a replacement, default 10000).
// Run by tests/e2e/readers.rs against live replicas and the simulator.

declare(strict_types=1);

const REFUSED = [40001, 40014, 42001];

function fail(string $why): never
{
    fwrite(STDERR, "reader.php: $why\n");
    exit(1);
}

function connect(string $url): Redis
{
    $u = parse_url($url);
    $redis = new Redis();
    $redis->connect($u['host'] ?? '127.0.0.1', $u['port'] ?? 6379, 2.0);
    if (isset($u['pass'])) {
        $redis->auth(isset($u['user']) ? [$u['user'], $u['pass']] : $u['pass']);
    }
    return $redis;
}

/** One WeChat API call with $token; its errcode (0 on success). */
function call_wechat(string $api, string $token): int
{
    $url = "$api/cgi-bin/get_api_domain_ip?access_token=" . rawurlencode($token);
    $ctx = stream_context_create(['http' => ['timeout' => 5]]);
    $body = @file_get_contents($url, false, $ctx);
    if ($body === false) {
        fail("WeChat API unreachable at $api");
    }
    $reply = json_decode($body, true);
    return (int) ($reply['errcode'] ?? 0);
}

/** Passive refresh: records the refused token ('-' if none was stored), wakes the refreshers. */
function report_refused(Redis $redis, string $id, string $refused): void
{
    $redis->set('wxtoken:{' . $id . '}:refresh_request:access_token', $refused, ['px' => 600000]);
    $redis->publish('wxtoken:requests', "$id access_token");
}

/** Polls until a token other than $refused is stored; false after $waitMs. */
function await_replacement(Redis $redis, string $id, string $refused, int $waitMs): string|false
{
    $deadline = microtime(true) + $waitMs / 1000;
    while (microtime(true) < $deadline) {
        usleep(100000);
        $token = $redis->get('wxtoken:{' . $id . '}:access_token');
        if ($token !== false && $token !== $refused) {
            return $token;
        }
    }
    return false;
}

$api = rtrim(getenv('WECHAT_API') ?: 'https://api.weixin.qq.com', '/');
$waitMs = (int) (getenv('WXTOKEN_WAIT_MS') ?: 10000);
$id = getenv('WXTOKEN_ID') ?: 'oa-main';
$componentAppid = getenv('WXTOKEN_COMPONENT_APPID');
$authorizerAppid = getenv('WXTOKEN_AUTHORIZER_APPID');
if ($componentAppid && $authorizerAppid) {
    $id = "authorizer/$componentAppid/$authorizerAppid";
}

try {
    $redis = connect(getenv('REDIS_URL') ?: 'redis://127.0.0.1:6379');
    $token = $redis->get('wxtoken:{' . $id . '}:access_token'); // false: none stored right now
    $refused = null;
    if ($token === false) {
        $refused = '-';
    } else {
        $errcode = call_wechat($api, $token);
        if (in_array($errcode, REFUSED, true)) {
            $refused = $token;
        }
    }
    if ($refused !== null) {
        report_refused($redis, $id, $refused);
        $token = await_replacement($redis, $id, $refused, $waitMs);
        if ($token === false) {
            fail("no new token for $id within $waitMs ms");
        }
        $errcode = call_wechat($api, $token);
    }
} catch (RedisException $e) {
    fail('Redis: ' . $e->getMessage());
}
if ($errcode !== 0) {
    fail("WeChat answered errcode $errcode");
}
echo json_encode([
    'id' => $id,
    'token_prefix' => substr($token, 0, 8),
    'refused_prefix' => $refused === null ? null : substr($refused, 0, 8),
    'refreshed' => $refused !== null,
    'errcode' => $errcode,
]), "\n";
