"""A syslog collector as its own process: RFC 6587 octet-counted RFC 5424 over TCP.

    python syslog_collector.py PORT      (0: any free port)

Prints "port N" once listening, then one line per message: "seq N" (the RFC 5424
meta sequenceId, checked against the record's own seq) or "direct EVENT" for an
alert that carries none. Tests stop it (SIGSTOP: a hung collector) and kill it.
"""

import json
import re
import socket
import sys
import threading

SD_SEQ = re.compile(rb'^\[meta sequenceId="(\d+)"\] ')
out_lock = threading.Lock()


def say(text: str) -> None:
    with out_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def serve(conn: socket.socket) -> None:
    f = conn.makefile("rb")
    while True:
        n = b""
        while (c := f.read(1)) not in (b" ", b""):
            n += c
        if not n:
            conn.close()  # orderly close after EOF: how the gateway knows we read everything
            return
        msg = f.read(int(n))
        rest = msg.split(b" ", 6)[6]
        m = SD_SEQ.match(rest)
        if m:
            rec = json.loads(rest[m.end():])
            assert int(m.group(1)) == rec["seq"]
            say(f"seq {rec['seq']}")
        else:
            say(f"direct {json.loads(rest[2:])['event']}")


def main() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[1])))
    srv.listen(16)
    say(f"port {srv.getsockname()[1]}")
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
