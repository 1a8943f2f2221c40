"""The wire: frame kinds and sizes, JSON through the C accelerator, errors, request fields.

A frame is a 4-byte big-endian payload length, one kind byte, then the payload (``PROTOCOL.md``
next to this package). Errors travel as :class:`GuestFail` (a kind the host maps to a status
code, and a message).
"""

# SIM105: contextlib.suppress would cost an import on the guest's startup path.
# ruff: noqa: SIM105

import _json
import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


VERSION = "1"


# Frame kinds. A frame is: 4-byte big-endian payload length, 1 kind byte, payload.
K_REQ = 1  # client -> guest: JSON request (always the first frame of a connection)


K_DATA = 2  # raw bytes: file content (both ways), stdin (client -> guest)


K_END = 3  # end of a data stream: file body done, or "close stdin" inside an exec session


K_RESULT = 4  # guest -> client: JSON result of an operation (or the header of a file read)


K_ERROR = 5  # guest -> client: JSON {"kind", "message"}; ends the response


K_EVENT = 6  # guest -> client: JSON process event ({"type": "start"|"exit", ...})


K_STDOUT = 7  # guest -> client: raw stdout bytes


K_STDERR = 8  # guest -> client: raw stderr bytes


K_SIGNAL = 9  # client -> guest inside an exec/attach session: signal number, ASCII decimal


HDR = 5


MAX_IN_FRAME = 8 << 20  # inbound frames larger than this are a protocol error


READ_CHUNK = 65536
# The guest's umask (set once at start): written files get 0666 & ~UMASK unless a mode is given.
UMASK = 0o022


class _ScanCtx:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: "dict[str, str]" = {}


_scan = _json.make_scanner(_ScanCtx())  # type: ignore[arg-type]


def _unencodable(obj: object) -> object:
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


_encode = _json.make_encoder(
    None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)


def jdump(obj: object) -> bytes:
    return "".join(_encode(obj, 0)).encode("ascii")


def jload(data: bytes) -> "Any":
    text = data.decode("utf-8")
    try:
        obj, end = _scan(text, 0)
    except Exception as e:  # the C scanner raises odd types (SystemError) without `json`
        raise GuestFail("invalid_argument", "malformed JSON") from e
    if end != len(text):
        raise GuestFail("invalid_argument", "trailing data after JSON")
    return obj


class GuestFail(Exception):
    """An error reported to the client as an ERROR frame with a machine-readable kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_ERRNO_KIND = {
    errno.ENOENT: "not_found",
    errno.ESRCH: "not_found",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.EEXIST: "exists",
    errno.ENOTEMPTY: "exists",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
    errno.ETXTBSY: "permission",
    errno.EINVAL: "invalid_argument",
    errno.ENAMETOOLONG: "invalid_argument",
    errno.ELOOP: "invalid_argument",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
}


def os_fail(e: "OSError", what: str) -> "GuestFail":
    kind = _ERRNO_KIND.get(e.errno or 0, "internal")
    if kind == "not_found":  # say it plainly: people (and logs) read "not found"
        return GuestFail(kind, f"{what}: not found")
    return GuestFail(kind, f"{what}: {e.strerror or e}")


def log(msg: str) -> None:
    try:
        os.write(2, f"warren-guest[{os.getpid()}]: {msg}\n".encode(errors="replace"))
    except OSError:
        pass


def frame(kind: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(4, "big") + bytes((kind,)) + payload


def req_str(req: "dict[str, Any]", key: str, default: "str | None" = None) -> str:
    v = req.get(key, default)
    if not isinstance(v, str):
        raise GuestFail("invalid_argument", f"field {key!r} must be a string")
    return v


def req_path(req: "dict[str, Any]", key: str = "path") -> str:
    p = req_str(req, key)
    if not p.startswith("/"):
        raise GuestFail("invalid_argument", f"path must be absolute: {p!r}")
    if "\0" in p:
        raise GuestFail("invalid_argument", "path contains a NUL byte")
    return os.path.normpath(p)


def req_selector(req: "dict[str, Any]") -> "int | str":
    pid = req.get("pid")
    tag = req.get("tag")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        return pid
    if isinstance(tag, str) and tag:
        return tag
    raise GuestFail("invalid_argument", "a selector needs a positive 'pid' or a non-empty 'tag'")
