#!/usr/bin/env python3
"""A scripted fake model server for running the real agent CLIs offline.

Serves the Anthropic Messages API (`POST /v1/messages`, streamed as SSE or, when the request
says `"stream": false`, as one JSON message) for Claude Code, and the OpenAI Responses API
(`POST /v1/responses`, SSE) for Codex, on 127.0.0.1 only.

Usage: server.py SCRIPT.json RECORD.jsonl [--max-lifetime SECONDS]

Prints the port it listens on as the first line of stdout. Exits when stdin reaches EOF
(the test that started it died or closed it), or after the maximum lifetime.

The script is a JSON object:

    {"conversations": [
        {"match": "unique text in the request body",
         "turns": [TURN, ...]}]}

A request belongs to the first conversation whose `match` occurs in its body; each request
of a conversation is answered by its next turn (a turn with `"repeat": true` answers every
later request too). A turn is one of:

    {"bash": "shell command"}         a shell tool call (Claude: Bash, Codex: exec_command)
    {"tool": NAME, "input": {...}}    any other tool call (e.g. an MCP tool)
    {"text": "final answer"}          the final answer, ending the run
    {"status": 429, "headers": {"retry-after": "3"}, "message": "..."}
                                      an HTTP error (429, 500, 529, ...) with an API error body
    {"cut": true}                     starts the stream, then closes the connection mid-way
    {"hang": true}                    reads the request and never answers
    {"hang_after_headers": true}      sends the status line and headers, then nothing
    {"linger": true, ...}             (no effect on the answer; for the test's own bookkeeping)

Any turn may carry `"usage": {"input_tokens": N, "output_tokens": M}` and `"delay": SECONDS`
(waited before answering). A request no conversation matches, or one past the end of its
conversation's turns, gets HTTP 400 with a message saying so (the CLI then reports an API
error, so a test never passes by accident).

Every request is appended to RECORD.jsonl as one JSON object: `path`, `headers`, `body`
(parsed JSON when it is JSON), `conversation` (its `match`), `turn` (index) and `served`
(what it got), `t` (Unix time).
"""

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNTS = {}
SCRIPT = {"conversations": []}
RECORD = None
SEQ = [0]


def next_id(prefix):
    with LOCK:
        SEQ[0] += 1
        return "%s_%06d" % (prefix, SEQ[0])


def pick(body_text):
    """(conversation, turn index, turn) for a request body; turn None when nothing is left."""
    for conv in SCRIPT["conversations"]:
        if conv["match"] in body_text:
            with LOCK:
                i = COUNTS.get(conv["match"], 0)
                turns = conv["turns"]
                if i < len(turns):
                    turn = turns[i]
                    COUNTS[conv["match"]] = i + 1
                    return conv, i, turn
                if turns and turns[-1].get("repeat"):
                    return conv, len(turns) - 1, turns[-1]
                return conv, i, None
    return None, None, None


def record(entry):
    line = json.dumps(entry, ensure_ascii=False)
    with LOCK:
        with open(RECORD, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def sse(event, data):
    return ("event: %s\ndata: %s\n\n" % (event, json.dumps(data))).encode()


def usage_of(turn):
    u = turn.get("usage") or {}
    return int(u.get("input_tokens", 100)), int(u.get("output_tokens", 20))


# --- Anthropic Messages -----------------------------------------------------------------


def anthropic_content(turn):
    if "bash" in turn:
        return {"type": "tool_use", "id": next_id("toolu"), "name": "Bash", "input": {"command": turn["bash"]}}
    if "tool" in turn:
        return {"type": "tool_use", "id": next_id("toolu"), "name": turn["tool"], "input": turn.get("input", {})}
    return {"type": "text", "text": turn.get("text", "")}


def anthropic_events(turn, model, cut=False):
    inp, out = usage_of(turn)
    block = anthropic_content(turn)
    msg = {
        "id": next_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }
    yield sse("message_start", {"type": "message_start", "message": msg})
    if block["type"] == "tool_use":
        start = dict(block, input={})
        yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start})
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    else:
        yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        delta = {"type": "text_delta", "text": block["text"]}
    if cut:
        return
    yield sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    stop = "tool_use" if block["type"] == "tool_use" else "end_turn"
    yield sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": out}})
    yield sse("message_stop", {"type": "message_stop"})


def anthropic_message(turn, model):
    inp, out = usage_of(turn)
    block = anthropic_content(turn)
    return {
        "id": next_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": "tool_use" if block["type"] == "tool_use" else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def anthropic_error(status, message):
    kind = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error"}.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# --- OpenAI Responses -------------------------------------------------------------------


def responses_item(turn):
    if "bash" in turn:
        return {"type": "function_call", "id": next_id("fc"), "call_id": next_id("call"), "name": "exec_command", "arguments": json.dumps({"cmd": turn["bash"]})}
    if "tool" in turn:
        item = {"type": "function_call", "id": next_id("fc"), "call_id": next_id("call"), "name": turn["tool"], "arguments": json.dumps(turn.get("input", {}))}
        if "namespace" in turn:
            item["namespace"] = turn["namespace"]
        return item
    if "tool_search" in turn:
        return {"type": "tool_search_call", "id": next_id("ts"), "call_id": next_id("call"), "status": "completed", "execution": "client", "arguments": turn["tool_search"]}
    return {"type": "message", "id": next_id("msg"), "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": turn.get("text", ""), "annotations": []}]}


def responses_events(turn, cut=False):
    inp, out = usage_of(turn)
    rid = next_id("resp")
    yield sse("response.created", {"type": "response.created", "response": {"id": rid}})
    if cut:
        return
    item = responses_item(turn)
    yield sse("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item})
    usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}
    yield sse("response.completed", {"type": "response.completed", "response": {"id": rid, "usage": usage}})


def responses_error(status, message, turn):
    kind = {429: "rate_limit_exceeded"}.get(status, "server_error")
    err = {"type": turn.get("error_type", kind), "message": message}
    if "resets_in_seconds" in turn:
        err["resets_in_seconds"] = turn["resets_in_seconds"]
        err["resets_at"] = int(time.time() + float(turn["resets_in_seconds"]))
    if "plan_type" in turn:
        err["plan_type"] = turn["plan_type"]
    return {"error": err}


# --- HTTP -------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        record({"t": time.time(), "method": "GET", "path": self.path, "headers": dict(self.headers), "served": "404"})
        self.send_json(404, {"error": {"type": "not_found", "message": "fake model server: no GET routes"}})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def start_sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

    def hang(self):
        # Wait until the client goes away (or the server's lifetime ends).
        self.close_connection = True
        try:
            self.connection.settimeout(1.0)
            while True:
                try:
                    if not self.connection.recv(1024):
                        return
                except socket.timeout:
                    continue
        except OSError:
            return

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        path = self.path.split("?")[0]
        anthropic = path.endswith("/messages")
        responses = path.endswith("/responses")
        conv, idx, turn = pick(text) if (anthropic or responses) else (None, None, None)
        served = self.describe(turn, anthropic, responses, conv)
        record({"t": time.time(), "method": "POST", "path": self.path, "headers": dict(self.headers), "body": body,
                "conversation": conv["match"] if conv else None, "turn": idx, "served": served})
        if not (anthropic or responses):
            return self.send_json(404, {"error": {"type": "not_found", "message": "fake model server: unknown path " + self.path}})
        if turn is None:
            msg = "fake model server: no scripted turn left for this request" if conv else "fake model server: no conversation matches this request"
            return self.send_json(400, anthropic_error(400, msg) if anthropic else {"error": {"type": "invalid_request_error", "message": msg}})
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        if turn.get("hang"):
            return self.hang()
        if turn.get("hang_after_headers"):
            self.start_sse()
            return self.hang()
        if "status" in turn:
            status = int(turn["status"])
            message = turn.get("message", "fake model server: scripted HTTP %d" % status)
            obj = turn.get("body") or (anthropic_error(status, message) if anthropic else responses_error(status, message, turn))
            return self.send_json(status, obj, turn.get("headers"))
        cut = bool(turn.get("cut"))
        try:
            if anthropic:
                model = body.get("model", "claude-sonnet-4-5") if isinstance(body, dict) else "claude-sonnet-4-5"
                if isinstance(body, dict) and body.get("stream") is False:
                    if cut:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    return self.send_json(200, anthropic_message(turn, model))
                events = anthropic_events(turn, model, cut)
            else:
                events = responses_events(turn, cut)
            self.start_sse()
            for chunk in events:
                self.wfile.write(chunk)
                self.wfile.flush()
            if cut:
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    @staticmethod
    def describe(turn, anthropic, responses, conv):
        if not (anthropic or responses):
            return "404"
        if turn is None:
            return "400 no turn" if conv else "400 no conversation"
        for k in ("hang", "hang_after_headers", "cut"):
            if turn.get(k):
                return k
        if "status" in turn:
            return str(turn["status"])
        for k in ("bash", "tool", "tool_search", "text"):
            if k in turn:
                return k
        return "text"


def main():
    global SCRIPT, RECORD
    args = sys.argv[1:]
    lifetime = 300.0
    if "--max-lifetime" in args:
        i = args.index("--max-lifetime")
        lifetime = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.stderr.write("usage: server.py SCRIPT.json RECORD.jsonl [--max-lifetime SECONDS]\n")
        sys.exit(2)
    with open(args[0], encoding="utf-8") as f:
        SCRIPT = json.load(f)
    RECORD = args[1]
    open(RECORD, "a").close()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)

    def stop_on_eof():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        os._exit(0)

    def stop_after_lifetime():
        time.sleep(lifetime)
        sys.stderr.write("fake model server: maximum lifetime of %gs reached\n" % lifetime)
        os._exit(0)

    threading.Thread(target=stop_on_eof, daemon=True).start()
    threading.Thread(target=stop_after_lifetime, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
