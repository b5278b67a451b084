"""MLLP listener: HL7 v2 messages over TCP, framed by the Minimal Lower Layer Protocol.

TCP is a byte stream; it has no idea where one HL7 message ends and the next begins. MLLP
(HL7 "Transport Specification: MLLP, Release 2", the framing every interface engine speaks)
draws those lines with three reserved bytes::

    <SB> payload <EB><CR>        SB = 0x0B (VT)   EB = 0x1C (FS)   CR = 0x0D

The payload is the ER7 message exactly as the sender encoded it (segments separated by CR).
The listener never decodes it: the charset is declared in MSH-18 and is the parser's business.
Release 2 forbids payload bytes that collide with the framing, which is why single-byte
charsets, UTF-8 and GB18030 work over MLLP (their multi-byte sequences never use bytes below
0x30) and UTF-16 does not.

One connection carries many messages, one after another. The sender waits for the answer to
each message (an HL7 ACK, itself an MLLP block) before it sends the next, or pipelines a few
and matches the answers by order. So within one connection, messages are handled strictly in
order, and each answer is written before the next message of that connection is handled.
Connections are independent of each other and run concurrently, one thread each.

Release 2 also defines transport-level commit blocks (``<SB><ACK><EB><CR>``, 0x06 / 0x15).
HL7 v2 senders do not use them: they expect the HL7 ACK message (original mode), or an accept
ACK followed by an application ACK (enhanced mode, MSH-15 / MSH-16). The listener sends what
the handler returns and nothing else; see :class:`MllpReply`.

What real feeds do, and what this module does about it:

- A frame split across reads, several frames in one read: :class:`MllpDecoder` is incremental
  and returns every complete frame of a read, in order.
- Bytes outside any frame (a stray CR after the end block, line noise, an engine's
  keep-alive text): discarded and counted in :attr:`MllpDecoder.discarded_bytes`.
- A start byte inside a frame (a flood of 0x0B, or a sender that abandoned a half-sent
  message and started again): the new 0x0B restarts the frame and the unfinished one is
  dropped. Release 2 does not allow 0x0B in a payload, so it can only mean a new block; the
  sender never finished the old one, so it is not waiting for an answer to it.
- An 0x1C not followed by 0x0D: kept as payload data. A block ends only at the two-byte
  sequence EB CR. Release 2 does not allow a lone 0x1C in a payload either, but cutting the
  message there would turn one send into two garbage messages and two answers, and the
  sender would pair its next message with the wrong ACK. Kept as data, the message reaches
  the parser, which refuses the control byte with an answer that names it.
- A huge message: accepted up to ``max_bytes`` in linear time (one pass over the bytes, an
  amortised append). Above it, the rest of the frame is read and thrown away without being
  buffered, and the frame is reported once, at its end block, with its first
  :data:`HEAD_BYTES` bytes, so ``on_too_large`` can recover MSH-10 for the AR.
- A peer that connects and says nothing, or stalls half-way through: closed after
  ``idle_timeout`` seconds without a byte.
- A peer that hangs up mid-frame: the partial frame is dropped (the handler never sees it)
  and logged; the server keeps serving everyone else.
- A handler that raises (its contract says it never does): logged, and that connection is
  closed without an answer. Closing, not silence, is the signal every engine understands:
  it reconnects and resends at once instead of waiting for its ACK timeout, and no later
  message of that connection is answered out of turn.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

CURRENT_CONNECTION: ContextVar[tuple | None] = ContextVar("mllp_connection", default=None)
"""(peer, socket) of the connection whose message the handler is answering (one thread each)."""

HEAD_BYTES = 4096
"""How much of an oversized message is kept: enough for any real MSH segment."""

_CR = 0x0D
_RECV_BYTES = 64 * 1024
_STOP_JOIN_SECONDS = 5.0


class MllpFrameTooLarge(Exception):
    """A frame went over ``max_bytes``; ``head`` holds its first bytes, ``size`` its length."""

    def __init__(self, size: int, limit: int, head: bytes) -> None:
        super().__init__(f"MLLP frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.head = head


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete MLLP block, framing removed.

    ``payload`` is empty when ``too_large`` is set: the bytes were discarded on the way, and
    only ``head`` (the first :data:`HEAD_BYTES`) and ``size`` survive.
    """

    payload: bytes
    size: int
    too_large: bool = False
    head: bytes = b""

    def raise_if_too_large(self, limit: int) -> None:
        """Turn a too-large report into :class:`MllpFrameTooLarge` for callers that prefer raising."""
        if self.too_large:
            raise MllpFrameTooLarge(self.size, limit, self.head)


def frame(payload: bytes) -> bytes:
    """Wrap a payload in an MLLP block: ``0x0B + payload + 0x1C 0x0D``."""
    return START_BLOCK + payload + END_BLOCK


class MllpDecoder:
    """Incremental MLLP framer for one byte stream; feed it reads, get complete frames back.

    Pure (no I/O, no threads) so every framing rule is unit-testable. Searches for the framing
    bytes resume where the previous one stopped and never rescan, so a read full of lone 0x1C
    bytes, a flood of 0x0B, or an endless oversized frame still costs time linear in its length.
    """

    def __init__(self, max_bytes: int = 10 * 1024 * 1024) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.discarded_bytes = 0
        """Bytes thrown away so far: outside any frame, or in frames restarted by a new 0x0B."""
        self._in_frame = False
        self._buf = bytearray()
        self._size = 0
        self._too_large = False
        self._head = bytearray()  # first HEAD_BYTES of an oversized frame
        self._pending_eb = False  # last byte seen was 0x1C inside a frame; its meaning depends on the next byte

    @property
    def in_frame(self) -> bool:
        """True while a frame is open: a disconnect now loses a partial message."""
        return self._in_frame

    @property
    def pending_bytes(self) -> int:
        """Payload bytes of the open frame received so far (buffered or, if too large, counted)."""
        return self._size + (1 if self._pending_eb else 0)

    @property
    def buffered_bytes(self) -> int:
        """Bytes actually held in memory; never more than ``max_bytes`` plus one read."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Consume one read; return the frames it completed, in stream order."""
        if not isinstance(data, bytes):
            data = bytes(data)
        n = len(data)
        frames: list[Frame] = []
        pos = 0
        if self._pending_eb and n:
            self._pending_eb = False
            if data[0] == _CR:
                frames.append(self._finish())
                pos = 1
            else:
                self._append(b"\x1c", 0, 1)
        view = memoryview(data)
        # Positions of the next 0x0B and 0x1C at or after pos (n: none left in this read). A
        # result stays valid until pos passes it, so no byte is searched twice for the same byte.
        next_sb = -1
        next_eb = -1
        while pos < n:
            if next_sb < pos:
                next_sb = data.find(START_BLOCK, pos)
                if next_sb < 0:
                    next_sb = n
            if not self._in_frame:
                self.discarded_bytes += next_sb - pos
                if next_sb == n:
                    break
                self._open()
                pos = next_sb + 1
                continue
            if next_eb < pos:
                next_eb = data.find(b"\x1c", pos)
                if next_eb < 0:
                    next_eb = n
            if next_sb < next_eb:
                # A new start block inside a frame: the old frame was abandoned.
                self.discarded_bytes += self.pending_bytes + (next_sb - pos)
                self._open()
                pos = next_sb + 1
                continue
            if next_eb == n:
                self._append(view, pos, n)
                break
            self._append(view, pos, next_eb)
            if next_eb + 1 == n:
                self._pending_eb = True
                break
            if data[next_eb + 1] == _CR:
                frames.append(self._finish())
                pos = next_eb + 2
            else:
                self._append(view, next_eb, next_eb + 1)  # lone 0x1C: payload data
                pos = next_eb + 1
        return frames

    def _open(self) -> None:
        self._in_frame = True
        self._buf.clear()  # safe: a finished frame's payload is a copy
        self._size = 0
        if self._too_large:
            self._too_large = False
            self._head = bytearray()
        self._pending_eb = False

    def _append(self, data: bytes | memoryview, start: int, end: int) -> None:
        count = end - start
        if count <= 0:
            return
        if not self._too_large and self._size + count > self.max_bytes:
            self._head = bytearray(self._buf[:HEAD_BYTES])
            self._buf = bytearray()
            self._too_large = True
        if self._too_large:
            missing = HEAD_BYTES - len(self._head)
            if missing > 0:
                self._head += data[start:start + min(missing, count)]
            self._size += count
            return
        self._buf += data[start:end]
        self._size += count

    def _finish(self) -> Frame:
        self._in_frame = False
        if self._too_large:
            result = Frame(payload=b"", size=self._size, too_large=True, head=bytes(self._head))
        else:
            payload = bytes(self._buf)
            result = Frame(payload=payload, size=len(payload), head=payload[:HEAD_BYTES])
        self._buf = bytearray()
        self._size = 0
        self._too_large = False
        self._head = bytearray()
        return result


@dataclass(frozen=True, slots=True)
class MllpReply:
    """What the handler wants sent back for one message.

    Both are HL7 message payloads without MLLP framing; the server frames them.
    ``ack=None`` sends nothing (MSH-15 = NE). ``later``, in enhanced mode, produces the
    application ACK after the accept ACK has been written; it runs on the connection's thread
    before the next message of that connection is handled, so answers stay in order.
    """

    ack: bytes | None
    later: Callable[[], bytes | None] | None = None
    close: bool = False
    """Close the connection once ``ack`` is written (the client behind it may no longer send)."""


Handler = Callable[[bytes], MllpReply]
"""Message payload in, reply out. Must not raise; the server guards it anyway."""

TooLargeHandler = Callable[[bytes], bytes]
"""First bytes of an oversized message in, AR payload (unframed) out."""


class MllpServer:
    """Threaded MLLP listener: one accept thread, one thread per connection.

    Threads keep the per-connection rule (answer before reading on) trivially true, and a
    hospital has tens of sending systems, not thousands, so ``max_connections`` threads is a
    small, predictable cost. Connections over the limit are closed at once: the sender sees a
    refusal and retries, instead of a connection that silently never answers.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        on_too_large: TooLargeHandler | None = None,
        idle_timeout: float = 300.0,
        max_connections: int = 256,
        ssl_context: ssl.SSLContext | None = None,
        on_connect: Callable[[tuple], bool] | None = None,
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._max_bytes = max_bytes
        self._on_too_large = on_too_large
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self._on_connect = on_connect
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()  # start/stop against each other
        self._lock = threading.Lock()  # the connection registry
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen, then serve in background threads; returns once connections are accepted."""
        with self._lifecycle:
            if self._listener is not None:
                raise RuntimeError("MllpServer already started")
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            listener = socket.create_server((self._host, self._port), family=family, backlog=128)
            listener.setblocking(False)
            self._listener = listener
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._accept_thread = threading.Thread(target=self._accept_loop, name="mllp-accept", daemon=True)
            self._accept_thread.start()
        tls = " (TLS)" if self._ssl_context else ""
        log.info("MLLP listening on %s:%d%s", *self.address, tls)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 this is where the OS actually put us."""
        if self._listener is None:
            raise RuntimeError("MllpServer not started")
        sockname = self._listener.getsockname()
        return sockname[0], sockname[1]

    @property
    def active_connections(self) -> int:
        """Connections currently open (for health checks and tests)."""
        with self._lock:
            return len(self._connections)

    def serve_forever(self) -> None:
        """Start (if needed) and block until :meth:`stop` or Ctrl-C; the CLI entry point."""
        if self._listener is None:
            self.start()
        try:
            while not self._stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("MLLP listener interrupted")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting, close every connection, join the threads (bounded wait); idempotent."""
        with self._lifecycle:
            if self._listener is None or self._stopping.is_set():
                return
            self._stopping.set()
            deadline = time.monotonic() + _STOP_JOIN_SECONDS
            assert self._wake_w is not None and self._accept_thread is not None
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
            with self._lock:
                for sock in self._connections:
                    _shutdown(sock)
                threads = list(self._connections.values())
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                log.warning("MLLP stop: %d connection thread(s) still busy in a handler: %s", len(stuck), stuck)
            for sock in (self._listener, self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
            self._stopped.set()
        log.info("MLLP listener stopped")

    # -- accepting ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r or self._stopping.is_set():
                        return
                    self._accept_one()

    def _accept_one(self) -> None:
        assert self._listener is not None
        try:
            sock, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and friends: back off instead of spinning
            log.error("MLLP accept failed: %s", exc)
            time.sleep(0.1)
            return
        if not self._admit(peer):
            _close(sock)
            return
        sock.settimeout(self._idle_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                log.warning("MLLP TLS setup failed for %s: %s", _peer(peer), exc)
                _close(sock)
                return
        thread = threading.Thread(
            target=self._serve_connection, args=(sock, peer), name=f"mllp-{_peer(peer)}", daemon=True
        )
        with self._lock:
            if len(self._connections) >= self._max_connections:
                log.warning("MLLP refused %s: %d connections open (max_connections)", _peer(peer), len(self._connections))
                _close(sock)
                return
            self._connections[sock] = thread
        thread.start()

    def _admit(self, peer: tuple) -> bool:
        if self._on_connect is None:
            return True
        try:
            allowed = bool(self._on_connect(peer))
        except Exception:
            log.exception("MLLP on_connect failed for %s; refusing", _peer(peer))
            return False
        if not allowed:
            log.warning("MLLP refused %s: not allowed by on_connect", _peer(peer))
        return allowed

    # -- one connection ----------------------------------------------------------------------

    def _serve_connection(self, sock: socket.socket, peer: tuple) -> None:
        who = _peer(peer)
        CURRENT_CONNECTION.set((peer, sock))     # this thread's connection, for handlers that bind clients
        decoder = MllpDecoder(self._max_bytes)
        handled = 0
        log.debug("MLLP connection from %s", who)
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
            while not self._stopping.is_set():
                try:
                    data = sock.recv(_RECV_BYTES)
                except TimeoutError:
                    log.info("MLLP closing %s: idle for %.1fs", who, self._idle_timeout)
                    break
                if not data:
                    break
                for fr in decoder.feed(data):
                    if self._stopping.is_set() or not self._answer(sock, who, fr):
                        return
                    handled += 1
        except (OSError, ssl.SSLError) as exc:
            if not self._stopping.is_set():
                log.warning("MLLP connection %s failed: %s", who, exc)
        finally:
            if decoder.in_frame:
                log.warning("MLLP %s closed mid-frame: dropped a partial message of %d bytes", who, decoder.pending_bytes)
            if decoder.discarded_bytes:
                log.warning("MLLP %s sent %d bytes outside complete frames (discarded)", who, decoder.discarded_bytes)
            with self._lock:
                self._connections.pop(sock, None)
            _close(sock)
            log.debug("MLLP connection from %s closed after %d message(s)", who, handled)

    def _answer(self, sock: socket.socket, who: str, fr: Frame) -> bool:
        """Handle one frame and write its answer(s); False means close this connection."""
        if fr.too_large:
            log.warning("MLLP %s sent %d bytes, over the %d byte limit", who, fr.size, self._max_bytes)
            if self._on_too_large is None:
                return False
            try:
                nak = self._on_too_large(fr.head)
            except Exception:
                log.exception("MLLP on_too_large failed for %s; closing the connection", who)
                return False
            if nak is not None:
                sock.sendall(frame(nak))
            return True
        try:
            reply = self._handler(fr.payload)
            ack, later = reply.ack, reply.later
        except Exception:
            log.exception("MLLP handler failed on a %d byte message from %s; closing the connection", fr.size, who)
            return False
        if ack is not None:
            sock.sendall(frame(ack))
        if reply.close:
            log.warning("MLLP closing %s: refused by the handler", who)
            return False
        if later is not None:
            try:
                app_ack = later()
            except Exception:
                log.exception("MLLP application ACK failed for %s; closing the connection", who)
                return False
            if app_ack is not None:
                sock.sendall(frame(app_ack))
        return True


def _peer(peer: tuple) -> str:
    return f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer)


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked in recv on ``sock``; bypasses SSLSocket.shutdown, which drops its TLS state."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
