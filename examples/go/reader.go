// A business server's wxtoken reader in Go (redigo: Debian's
// golang-github-gomodule-redigo-dev, or `go get github.com/gomodule/redigo`).
//
// Reads the access token wxtoken keeps in Redis with one GET, calls a WeChat
// API with it and, when WeChat refuses the token (40001, 40014, 42001),
// reports it the documented way (README, "Passive refresh"), waits for the
// replacement and calls again. Prints one JSON line; exits 1 on failure.
//
//	REDIS_URL=redis://127.0.0.1:6379 WXTOKEN_ID=oa-main go run reader.go
//
// Environment: REDIS_URL, WXTOKEN_ID (a credential id) or
// WXTOKEN_COMPONENT_APPID + WXTOKEN_AUTHORIZER_APPID (an authorizer of a
// third-party platform), WECHAT_API (default https://api.weixin.qq.com),
// WXTOKEN_WAIT_MS (how long to wait for a replacement, default 10000).
// Run by tests/e2e/readers.rs against live replicas and the simulator.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

var refusedCodes = map[int]bool{40001: true, 40014: true, 42001: true}

// callWechat makes one WeChat API call with token; its errcode (0 on success).
func callWechat(api, token string) (int, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(api + "/cgi-bin/get_api_domain_ip?access_token=" + url.QueryEscape(token))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var reply struct {
		Errcode int `json:"errcode"`
	}
	err = json.NewDecoder(resp.Body).Decode(&reply)
	return reply.Errcode, err
}

// reportRefused files a passive refresh: records the refused token ("-" if
// none was stored), wakes the refreshers.
func reportRefused(conn redis.Conn, id, refused string) error {
	if _, err := conn.Do("SET", "wxtoken:{"+id+"}:refresh_request:access_token", refused, "PX", 600000); err != nil {
		return err
	}
	_, err := conn.Do("PUBLISH", "wxtoken:requests", id+" access_token")
	return err
}

// awaitReplacement polls until a token other than refused is stored.
func awaitReplacement(conn redis.Conn, id, refused string, wait time.Duration) (string, error) {
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		token, err := redis.String(conn.Do("GET", "wxtoken:{"+id+"}:access_token"))
		if err == nil && token != refused {
			return token, nil
		}
		if err != nil && err != redis.ErrNil {
			return "", err
		}
	}
	return "", fmt.Errorf("no new token for %s within %v", id, wait)
}

func prefix(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

func run() error {
	api := strings.TrimRight(getenv("WECHAT_API", "https://api.weixin.qq.com"), "/")
	waitMs, err := strconv.Atoi(getenv("WXTOKEN_WAIT_MS", "10000"))
	if err != nil {
		return err
	}
	id := getenv("WXTOKEN_ID", "oa-main")
	componentAppid, authorizerAppid := os.Getenv("WXTOKEN_COMPONENT_APPID"), os.Getenv("WXTOKEN_AUTHORIZER_APPID")
	if componentAppid != "" && authorizerAppid != "" {
		id = "authorizer/" + componentAppid + "/" + authorizerAppid
	}

	conn, err := redis.DialURL(getenv("REDIS_URL", "redis://127.0.0.1:6379"), redis.DialConnectTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer conn.Close()
	token, err := redis.String(conn.Do("GET", "wxtoken:{"+id+"}:access_token")) // redis.ErrNil: none stored right now
	// The token WeChat refused, "-" if none was stored, "" while none was.
	refused := ""
	errcode := 0
	switch {
	case errors.Is(err, redis.ErrNil):
		refused = "-"
	case err != nil:
		return err
	default:
		if errcode, err = callWechat(api, token); err != nil {
			return err
		}
		if refusedCodes[errcode] {
			refused = token
		}
	}
	if refused != "" {
		if err = reportRefused(conn, id, refused); err != nil {
			return err
		}
		if token, err = awaitReplacement(conn, id, refused, time.Duration(waitMs)*time.Millisecond); err != nil {
			return err
		}
		if errcode, err = callWechat(api, token); err != nil {
			return err
		}
	}
	if errcode != 0 {
		return fmt.Errorf("WeChat answered errcode %d", errcode)
	}
	result := map[string]any{"id": id, "token_prefix": prefix(token), "refused_prefix": nil, "refreshed": refused != "", "errcode": errcode}
	if refused != "" {
		result["refused_prefix"] = prefix(refused)
	}
	return json.NewEncoder(os.Stdout).Encode(result)
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "reader.go:", err)
		os.Exit(1)
	}
}
