"""A FastAGI server that a test scripts line by line, as the probe that made the captures in
``../shared/asterisk/`` did: it accepts Asterisk's connection, reads the environment, and sends
the commands the test gives, one at a time, returning Asterisk's reply to each. It uses nothing
of the product, so what it shows is Asterisk's behaviour alone."""

from __future__ import annotations

import queue
import socket
import threading


class ProbeSession:
    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        sock.settimeout(timeout)
        self.file = sock.makefile("rb")
        self.env: dict[str, str] = {}
        self.hung_up = False
        while (line := self.read_line()) != "":
            key, _, value = line.partition(":")
            self.env[key] = value.strip()

    def read_line(self) -> str:
        raw = self.file.readline()
        if not raw:
            raise ConnectionError("Asterisk closed the FastAGI connection")
        return raw.decode("utf-8", "replace").rstrip("\n")

    def send(self, command: str) -> str:
        """Sends one command line; Asterisk's reply (a multi-line ``520-`` usage reply joined
        with newlines). An unprompted ``HANGUP`` before it is noted in :attr:`hung_up`."""
        self.sock.sendall(command.encode() + b"\n")
        while True:
            line = self.read_line()
            if line == "HANGUP":
                self.hung_up = True
                continue
            if line.startswith("520-"):
                lines = [line]
                while not (line := self.read_line()).startswith("520 "):
                    lines.append(line)
                return "\n".join(lines + [line])
            if line.startswith("100 "):
                continue
            return line

    def close(self) -> None:
        """Half-closes, as the service does, and waits for Asterisk to close its side."""
        if self.sock.fileno() < 0:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while self.file.readline():
                pass
        except OSError:
            pass
        finally:
            self.sock.close()


class Probe:
    """Listens on a free loopback port; :meth:`session` hands over the next connection."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._accepted: queue.Queue = queue.Queue()
        self._sessions: list[ProbeSession] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="agi-probe")
        self._thread.start()

    def url(self, script: str = "probe") -> str:
        return f"agi://127.0.0.1:{self.port}/{script}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            self._accepted.put(sock)

    def session(self, timeout: float | None = None) -> ProbeSession:
        try:
            sock = self._accepted.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise AssertionError("Asterisk did not connect to the FastAGI probe") from None
        session = ProbeSession(sock, self.timeout)
        self._sessions.append(session)
        return session

    def close(self) -> None:
        """Stops listening and ends every session still open (Asterisk keeps a hung-up
        channel, and its MixMonitors, until its AGI session ends)."""
        self.server.close()
        for session in self._sessions:
            session.close()
