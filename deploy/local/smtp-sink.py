#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for the tests and the demo: it accepts every message
and saves it, never relays it. Each message becomes one file in the mail folder,
<nanoseconds>-<n>.eml, written under a temporary name and renamed, so a reader never
sees half a message. The envelope comes first as X-Envelope-From / X-Envelope-To
headers, then the message exactly as received.

Optional STARTTLS (--tls-cert/--tls-key, PEM) and AUTH (--auth-user, password from the
SMTP_SINK_PASSWORD environment variable; AUTH is offered only after STARTTLS). Stops on
SIGTERM or SIGINT.

Usage: smtp-sink.py --listen 127.0.0.1:19025 --dir FOLDER [--tls-cert C --tls-key K]
                    [--auth-user USER]
"""

import argparse
import asyncio
import itertools
import os
import signal
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Saver:
    def __init__(self, folder):
        self.folder = folder
        self.counter = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        name = f"{time.time_ns()}-{os.getpid()}-{n}.eml"
        tmp = os.path.join(self.folder, f".{name}.tmp")
        head = f"X-Envelope-From: {envelope.mail_from}\r\n"
        for rcpt in envelope.rcpt_tos:
            head += f"X-Envelope-To: {rcpt}\r\n"
        with open(tmp, "wb") as f:
            f.write(head.encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(self.folder, name))
        return "250 Message accepted for delivery"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            auth_data is not None
            and getattr(auth_data, "login", None) == user.encode()
            and getattr(auth_data, "password", None) == password.encode()
        )
        return AuthResult(success=ok)

    return check


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:19025")
    p.add_argument("--dir", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--auth-user")
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    os.makedirs(a.dir, exist_ok=True)
    kwargs = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        kwargs["tls_context"] = ctx
        kwargs["require_starttls"] = True
    if a.auth_user:
        kwargs["authenticator"] = authenticator(
            a.auth_user, os.environ.get("SMTP_SINK_PASSWORD", "")
        )
        kwargs["auth_required"] = True
    controller = Controller(Saver(a.dir), hostname=host, port=int(port), **kwargs)
    controller.start()
    print(f"smtp-sink listening on {host}:{port}, saving to {a.dir}", flush=True)

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
