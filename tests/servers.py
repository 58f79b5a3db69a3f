"""Local stand-ins for the cluster side, for tests: a real S3 endpoint (moto's server) behind a proxy that
counts the bytes each request moves, and an HTTP endpoint that records what would reach Argo's API.
Neither is Argo nor MinIO: they check what this side sends and what S3 traffic it causes."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(handler_cls) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class MotoS3:
    """moto_server on 127.0.0.1 (a real S3 API) with a byte-counting proxy in front of it."""

    def __init__(self, bucket: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not start")
        self.log: list[tuple[str, str, int, int]] = []  # method, path, bytes sent up, bytes sent back
        upstream, log = self.port, self.log

        class Proxy(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                log.append((self.command, self.path, len(body), len(data)))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                # a HEAD answer carries no body but the object's length (S3 clients stat objects this way)
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.proxy = _serve(Proxy)
        self.endpoint = f"127.0.0.1:{self.proxy.server_address[1]}"
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                     aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket=bucket)

    def bytes_up(self, since: int = 0) -> int:
        return sum(e[2] for e in self.log[since:] if e[0] in ("PUT", "POST"))

    def bytes_down(self, since: int = 0) -> int:
        return sum(e[3] for e in self.log[since:] if e[0] == "GET")

    def close(self):
        self.proxy.shutdown()
        self.proc.terminate()
        self.proc.wait(10)


class ArgoRecorder:
    """Answers Argo's workflow API the way a server would, records every request (method, path, headers,
    JSON body). POST creates `<generateName>xxxxx`; GET returns it with the phase set in `phase`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.phase = "Running"
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                rec.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": body})
                if self.command == "POST":
                    meta = body["workflow"]["metadata"]
                    name = meta.get("name") or meta["generateName"] + "x7k2q"
                    reply = {"metadata": {"name": name, "uid": "0000-uid", "namespace": self.path.split("/")[4]}}
                else:
                    name = self.path.split("?")[0].split("/")[5] if self.path.count("/") >= 5 else ""
                    reply = {"metadata": {"name": name}, "status": {"phase": rec.phase, "nodes": {}}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = _serve(Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
