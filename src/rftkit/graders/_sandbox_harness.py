"""What runs inside a sandboxed run, after the confinement: the harnesses around the user's code.

Standard library only (loaded by the sandbox worker from this directory). Each run is a
fresh fork of the worker's zygote, which has never held a call's data; the run reads its
own request from fd 4 and writes its result to fd 3 (never both in the candidate's process).

Harnesses (`kind` of a request):

- `python_grade`: the user's `grade(sample, item)`; the number it returns.
- `tool_call`: one function of a tools file called with the model's arguments (agents/tools.py);
  what it returns, as text (JSON when it can be), at most `max_chars` of it.
- `script`: a whole program as __main__, stdin from the test's input. The host compares
  its stdout with the expected output, so nothing here decides the verdict.
- `check` (separated, the default of the `code` grader): two processes. The candidate's
  process (`role: candidate`) executes the candidate's code and then serves calls of its
  entry point; the test's process (`role: test`) executes the test program and calls
  `check(candidate)`, where `candidate` is a proxy: each call sends the arguments over a
  socket and gets back plain data only (a pickle restricted to builtin types, `Plain`), so
  no object of the candidate's making reaches the test's comparisons, and the candidate's
  process holds neither the result fd nor its nonce.
- `check_inprocess`: the old HumanEval harness (candidate and tests in one interpreter);
  faster, and forgeable by the candidate: for trusted code only.
"""

import builtins
import io
import json
import math
import numbers
import os
import pickle
import reprlib
import socket
import struct
import sys

FRAME_CAP = 16 << 20  # bytes of one message between the test's and the candidate's process
PICKLE_PROTOCOL = 5
# What a value from the candidate may be built from besides the pickle opcodes of None, bool,
# int, float, str, bytes, bytearray, list, tuple, dict, set and frozenset.
PLAIN_GLOBALS = {("builtins", "complex"), ("builtins", "bytearray"), ("builtins", "set"),
                 ("builtins", "frozenset"), ("builtins", "range"), ("builtins", "slice")}
NOT_REBUILT = {"SystemExit", "KeyboardInterrupt", "GeneratorExit"}


def short(value, limit=200):
    try:
        text = reprlib.repr(value)
    except BaseException:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text[:limit]


def exc_info(exc, filenames):
    """{'error_type', 'message', 'where'} of an exception, `where` in the user's own code."""
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        message = "<unprintable>"
    where, tb = None, exc.__traceback__
    while tb is not None:  # by hand: extract_tb would format every frame of a 10**6-deep recursion
        code = tb.tb_frame.f_code
        if code.co_filename in filenames:
            where = f"line {tb.tb_lineno}, in {code.co_name}"
        tb = tb.tb_next
    where = getattr(exc, "rftkit_where", None) or where  # raised in the candidate's process: where it was
    if isinstance(exc, SyntaxError) and exc.filename in filenames:
        where = f"line {exc.lineno}"
    out = {"error_type": type(exc).__name__, "message": message[:500], "where": where}
    if isinstance(exc, OSError):
        out["errno"] = exc.errno
    return out


# ---------------------------------------------------------------- single-process harnesses


def run_python_grade(req):
    ns = {"__name__": "__grader__", "__builtins__": builtins}
    try:
        exec(compile(req["source"], "<grader>", "exec"), ns)
        value = ns["grade"](req["sample"], req["item"])
    except SystemExit as exc:
        return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                "message": f"called exit({short(exc.code)}) instead of returning"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": "grade", **exc_info(exc, ("<grader>",))}
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except BaseException:  # noqa: BLE001 - e.g. an int too large for a float
            number = None
        if number is not None and math.isfinite(number):
            return {"ok": True, "value": number}
        if number is not None:
            return {"ok": False, "phase": "return", "message": f"grade returned {number}, not a finite number"}
    return {"ok": False, "phase": "return", "message": f"grade returned {short(value)}, not a number"}


def run_tool_call(req):
    ns = {"__name__": "__tools__", "__builtins__": builtins}
    filename = req.get("filename") or "<tools>"
    try:
        exec(compile(req["source"], filename, "exec"), ns)
        value = ns[req["name"]](**req["arguments"])
    except SystemExit as exc:
        return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                "message": f"called exit({short(exc.code)}) instead of returning"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": "tool", **exc_info(exc, (filename,))}
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except BaseException:  # noqa: BLE001 - not JSON: its repr, bounded
        text = short(value, req["max_chars"])
    plain = str.__str__(text)  # a str subclass's own methods are not called
    return {"ok": True, "text": plain[: req["max_chars"]], "chars": len(plain)}


def run_check_inprocess(req):
    """HumanEval as written: the candidate, then the test program, in one namespace; check(entry_point)."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    phase = "candidate"
    try:
        exec(compile(req["code"], "<candidate>", "exec"), ns)
        phase = "test"
        exec(compile(req["test"], "<test>", "exec"), ns)
        phase = "entry_point"
        if req["entry_point"] not in ns:
            return {"ok": False, "phase": phase, "message": f"the code defines no {req['entry_point']!r}"}
        phase = "check"
        ns["check"](ns[req["entry_point"]])
    except SystemExit as exc:
        return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                "message": f"called exit({short(exc.code)}) during the {phase}"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": phase, **exc_info(exc, ("<candidate>", "<test>"))}
    return {"ok": True}


def run_script(req):
    """A whole program as __main__, stdin from the test's input; sys.exit(0) is a normal end."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(req["code"], "<candidate>", "exec"), ns)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                    "message": f"exit status {short(exc.code)}"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": "script", **exc_info(exc, ("<candidate>",))}
    return {"ok": True}


# ---------------------------------------------------------------- the separated check


class Plain(pickle.Unpickler):
    """Unpickles builtin data only: no class, function or module of anyone's making."""

    def find_class(self, module, name):
        if (module, name) in PLAIN_GLOBALS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not plain data")


def plain_loads(data):
    return Plain(io.BytesIO(data)).load()


def send_frame(sock, data):
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv_frame(sock):
    """One message, or None at EOF; a frame over FRAME_CAP is refused before it is read."""
    header = _recv_exactly(sock, 4)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > FRAME_CAP:
        raise ValueError(f"a message of {size} bytes (the cap is {FRAME_CAP})")
    body = _recv_exactly(sock, size)
    if body is None:
        raise EOFError("the candidate's process closed the channel mid-message")
    return body


def _recv_exactly(sock, size):
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class CandidateGone(Exception):
    """The candidate's process ended or broke the protocol (its own doing: the test fails)."""


class HarnessError(Exception):
    """The test program passed something that cannot cross to the candidate's process."""


def serve_candidate(req, sock):
    """In the candidate's process: run the code, say whether the entry point exists, then serve requests:
    ("call", name, args, kwargs) of a function of its code, and ("lookup", name) of any other name."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(req["code"], "<candidate>", "exec"), ns)
        entry = ns.get(req["entry_point"])
        hello = {"ok": callable(entry), "phase": "entry_point",
                 "message": None if callable(entry) else f"the code defines no {req['entry_point']!r}"}
    except SystemExit as exc:
        hello, entry = {"ok": False, "phase": "exit", "error_type": "SystemExit",
                        "message": f"called exit({short(exc.code)}) during the candidate"}, None
    except BaseException as exc:  # noqa: BLE001
        hello, entry = {"ok": False, "phase": "candidate", **exc_info(exc, ("<candidate>",))}, None
    send_frame(sock, json.dumps(hello).encode())
    if entry is None:
        return
    while True:
        frame = recv_frame(sock)
        if frame is None:
            return
        request = pickle.loads(frame)  # from the trusted side
        reply = _lookup(ns, request[1]) if request[0] == "lookup" else _call(ns, *request[1:])
        try:
            data = pickle.dumps(reply, protocol=PICKLE_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001
            data = pickle.dumps(("unpicklable", f"{type(reply[1]).__name__}: {short(exc)}"), protocol=PICKLE_PROTOCOL)
        send_frame(sock, data)


def _call(ns, name, args, kwargs):
    try:
        return ("return", ns[name](*args, **kwargs))
    except SystemExit as exc:  # the test sees it as a failure
        return ("raise", {**exc_info(exc, ("<candidate>",)),
                          "message": f"called exit({short(exc.code)}) during a call of {name}"})
    except BaseException as exc:  # noqa: BLE001
        return ("raise", exc_info(exc, ("<candidate>",)))


def _lookup(ns, name):
    if name not in ns or name.startswith("__"):
        return ("missing", None)
    return ("callable", None) if callable(ns[name]) else ("value", ns[name])


def _rebuilt_exception(info):
    name, message = info.get("error_type", "Exception"), info.get("message", "")
    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)) or name in NOT_REBUILT:
        cls = CandidateError
        message = f"{name}: {message}" if name else message
    try:
        errno = info.get("errno")
        if issubclass(cls, OSError) and isinstance(errno, int):
            exc = cls(errno, message.removeprefix(f"[Errno {errno}] "))
        else:
            exc = cls(message)
    except BaseException:  # noqa: BLE001 - e.g. UnicodeDecodeError needs 5 arguments
        exc = CandidateError(f"{name}: {message}")
    exc.rftkit_where = info.get("where")
    return exc


class CandidateError(Exception):
    """An exception the candidate raised whose type is not a builtin one (rebuilt by name only)."""


def _ask(sock, request, name):
    """Send one request to the candidate's process; its reply as plain data (tag, value)."""
    try:
        data = pickle.dumps(request, protocol=PICKLE_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        raise HarnessError(f"the test passed {short(request[2:])} to {name}, which cannot be sent "
                           f"to the candidate's process ({type(exc).__name__}); use harness: inprocess") from None
    try:
        send_frame(sock, data)
        frame = recv_frame(sock)
    except OSError as exc:
        raise CandidateGone(f"the candidate's process went away ({exc.strerror or exc})") from None
    if frame is None:
        raise CandidateGone(f"the candidate's process ended while {name} was running")
    try:
        reply = plain_loads(frame)
        tag, value = reply
    except BaseException as exc:  # noqa: BLE001 - anything the candidate wrote on the channel
        raise CandidateGone(f"{name} returned something that is not plain data ({short(exc)})") from None
    return tag, value


def make_proxy(sock, name):
    """`name` of the candidate's code, as the test program sees it: a function that returns plain data."""
    def candidate(*args, **kwargs):
        tag, value = _ask(sock, ("call", name, args, kwargs), name)
        if tag == "return":
            return value
        if tag == "raise" and isinstance(value, dict):
            raise _rebuilt_exception(value)
        raise CandidateGone(f"{name} returned something that cannot be sent back ({short(value)})")

    candidate.__name__ = candidate.__qualname__ = str(name)
    return candidate


class CandidateNames(dict):
    """The test program's builtins: a name it uses but does not define comes from the candidate's
    code (HumanEval's tests call helpers of the prompt, such as `poly`, or the entry point by its
    name): a function as a proxy, a constant as plain data."""

    def __init__(self, sock):
        super().__init__(vars(builtins))
        self.sock = sock

    def __missing__(self, name):
        tag, value = _ask(self.sock, ("lookup", name), name)
        if tag == "callable":
            value = make_proxy(self.sock, name)
        elif tag != "value":
            raise KeyError(name)
        self[name] = value
        return value


def run_check_test(req, sock):
    """In the test's process: wait for the candidate's hello, run the test program, call check(proxy)."""
    try:
        frame = recv_frame(sock)
        hello = json.loads(frame) if frame else None
    except BaseException:  # noqa: BLE001 - garbage from the candidate's side
        hello = None
    if not isinstance(hello, dict):
        return {"ok": False, "phase": "candidate", "message": "the candidate's process ended before it was ready"}
    if hello.get("ok") is not True:
        return {k: v for k, v in hello.items() if k in ("phase", "message", "error_type", "where", "errno")} | {"ok": False}
    ns = {"__name__": "__main__", "__builtins__": CandidateNames(sock)}
    phase = "test"
    try:
        exec(compile(req["test"], "<test>", "exec"), ns)
        phase = "check"
        ns["check"](make_proxy(sock, req["entry_point"]))
    except HarnessError as exc:
        return {"ok": False, "phase": "harness", "message": str(exc)}
    except CandidateGone as exc:
        return {"ok": False, "phase": "candidate_gone", "message": str(exc)}
    except SystemExit as exc:
        return {"ok": False, "phase": "exit", "error_type": "SystemExit",
                "message": f"the test program called exit({short(exc.code)})"}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "phase": phase, **exc_info(exc, ("<test>",))}
    return {"ok": True}


SINGLE = {"python_grade": run_python_grade, "tool_call": run_tool_call, "script": run_script, "check_inprocess": run_check_inprocess}


def read_request(fd):
    with os.fdopen(fd, "rb", closefd=True) as f:
        return json.loads(f.read())


def channel(fd):
    return socket.socket(fileno=fd)


def flush_streams(result):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException as exc:  # noqa: BLE001 - e.g. EFBIG past the output limit
            if result.get("ok"):
                result = {"ok": False, "phase": "flush", **exc_info(exc, ())}
    return result
