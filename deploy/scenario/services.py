#!/usr/bin/env python3
"""Stand-ins for the course project's services, for deploy/Procfile: a Users service
(POST /users/register with {"username","password"}; GET /auth checks HTTP Basic) and Games
instances that answer with their own name and the user pibl vouched for (X-Auth-User).
Standard library only; state in memory."""

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERS = {}


class Users(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/users/register":
            return self.reply(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            USERS[body["username"]] = body["password"]
        except (ValueError, KeyError, TypeError):
            return self.reply(400, {"error": "send {\"username\": ..., \"password\": ...}"})
        self.reply(201, {"registered": body["username"]})

    def do_GET(self):
        if self.path != "/auth":
            return self.reply(404, {"error": "not found"})
        user = self.basic_user()
        if user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="wordle"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Auth-User", user)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def basic_user(self):
        value = self.headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(value[6:]).decode().partition(":")
        except ValueError:
            return None
        return name if USERS.get(name) == password else None

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def games(name):
    class Games(BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps({"served_by": name, "user": self.headers.get("X-Auth-User"), "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET

    return Games


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    handler = Users if kind == "users" else games(sys.argv[3] if len(sys.argv) > 3 else f"games:{port}")
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
