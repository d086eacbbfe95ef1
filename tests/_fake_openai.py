"""A loopback OpenAI-compatible server for tests that run real clients (CLI, docs)."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

__all__ = ["FakeOpenAI"]


class FakeOpenAI:
    """A loopback OpenAI-compatible server (a thread), answering from what it is sent.

    The reply to each chat completion names how many messages it received and the
    first one, so a test can see the history reach the model. Streams like OpenAI
    (text deltas, a finish chunk, a usage chunk, ``[DONE]``), or answers one JSON
    completion when not asked to stream. Usage is always 1000 + 100 tokens.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        #: Streamed before the text as ``reasoning_content`` deltas (as DeepSeek does).
        self.reasoning = ""
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.auth.append(self.headers.get("Authorization", ""))
                messages = body["messages"]
                text = f"You sent {len(messages)} message(s); the first: {messages[0]['content']}"
                usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
                if not body.get("stream"):
                    reply = {
                        "id": "c1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                    data = json.dumps(reply).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                base = {"id": "c1", "object": "chat.completion.chunk", "created": 0}
                base["model"] = body["model"]
                words = text.split(" ")
                events = [
                    {**base, "choices": [{"index": 0, "delta": {"reasoning_content": w + " "}}]}
                    for w in fake.reasoning.split(" ")
                    if fake.reasoning
                ]
                events += [
                    {**base, "choices": [{"index": 0, "delta": {"content": w + " "}}]}
                    for w in words[:-1]
                ]
                events.append({**base, "choices": [{"index": 0, "delta": {"content": words[-1]}}]})
                events.append(
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                )
                events.append({**base, "choices": [], "usage": usage})
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
