from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "template", "vcpus", "memory_mb", "timeout_sec", "disk_size_mb", "team_id", "template_id", "internet", "env", "egress_allow", "chain", "egress", "runtime", "owner_team_id", "owner_account_id")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERNET_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ALLOW_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    OWNER_TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    disk_size_mb: int
    team_id: str
    template_id: str
    internet: bool
    env: _containers.ScalarMap[str, str]
    egress_allow: _containers.RepeatedScalarFieldContainer[str]
    chain: TemplateChain
    egress: EgressRules
    runtime: str
    owner_team_id: str
    owner_account_id: str
    def __init__(self, sandbox_id: _Optional[str] = ..., template: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., timeout_sec: _Optional[int] = ..., disk_size_mb: _Optional[int] = ..., team_id: _Optional[str] = ..., template_id: _Optional[str] = ..., internet: _Optional[bool] = ..., env: _Optional[_Mapping[str, str]] = ..., egress_allow: _Optional[_Iterable[str]] = ..., chain: _Optional[_Union[TemplateChain, _Mapping]] = ..., egress: _Optional[_Union[EgressRules, _Mapping]] = ..., runtime: _Optional[str] = ..., owner_team_id: _Optional[str] = ..., owner_account_id: _Optional[str] = ...) -> None: ...

class EgressRules(_message.Message):
    __slots__ = ("allow_out", "deny_out")
    ALLOW_OUT_FIELD_NUMBER: _ClassVar[int]
    DENY_OUT_FIELD_NUMBER: _ClassVar[int]
    allow_out: _containers.RepeatedScalarFieldContainer[str]
    deny_out: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allow_out: _Optional[_Iterable[str]] = ..., deny_out: _Optional[_Iterable[str]] = ...) -> None: ...

class TemplateChain(_message.Message):
    __slots__ = ("base", "layers", "config")
    BASE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    base: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    config: TemplateConfig
    def __init__(self, base: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., config: _Optional[_Union[TemplateConfig, _Mapping]] = ...) -> None: ...

class TemplateConfig(_message.Message):
    __slots__ = ("env", "workdir", "user", "start_cmd", "ready_cmd", "ready_timeout_sec")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    START_CMD_FIELD_NUMBER: _ClassVar[int]
    READY_CMD_FIELD_NUMBER: _ClassVar[int]
    READY_TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    env: _containers.ScalarMap[str, str]
    workdir: str
    user: str
    start_cmd: str
    ready_cmd: str
    ready_timeout_sec: int
    def __init__(self, env: _Optional[_Mapping[str, str]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., start_cmd: _Optional[str] = ..., ready_cmd: _Optional[str] = ..., ready_timeout_sec: _Optional[int] = ...) -> None: ...

class CreateSandboxResponse(_message.Message):
    __slots__ = ("sandbox_id", "status", "host_ip", "disk_size_mb")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    status: str
    host_ip: str
    disk_size_mb: int
    def __init__(self, sandbox_id: _Optional[str] = ..., status: _Optional[str] = ..., host_ip: _Optional[str] = ..., disk_size_mb: _Optional[int] = ...) -> None: ...

class DestroySandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class DestroySandboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "resume_after")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    resume_after: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., resume_after: _Optional[bool] = ...) -> None: ...

class PauseSandboxResponse(_message.Message):
    __slots__ = ("paused_state",)
    PAUSED_STATE_FIELD_NUMBER: _ClassVar[int]
    paused_state: str
    def __init__(self, paused_state: _Optional[str] = ...) -> None: ...

class ResumeSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "timeout_sec")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    timeout_sec: int
    def __init__(self, sandbox_id: _Optional[str] = ..., timeout_sec: _Optional[int] = ...) -> None: ...

class ResumeSandboxResponse(_message.Message):
    __slots__ = ("sandbox_id", "status", "host_ip")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    status: str
    host_ip: str
    def __init__(self, sandbox_id: _Optional[str] = ..., status: _Optional[str] = ..., host_ip: _Optional[str] = ...) -> None: ...

class PingSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class PingSandboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("sandbox_id", "status", "template", "vcpus", "memory_mb", "host_ip", "created_at_unix", "last_active_at_unix", "timeout_sec", "team_id", "template_id", "disk_size_mb", "internet", "runtime", "paused_state", "egress_bytes")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    INTERNET_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_STATE_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    host_ip: str
    created_at_unix: int
    last_active_at_unix: int
    timeout_sec: int
    team_id: str
    template_id: str
    disk_size_mb: int
    internet: bool
    runtime: str
    paused_state: str
    egress_bytes: int
    def __init__(self, sandbox_id: _Optional[str] = ..., status: _Optional[str] = ..., template: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., host_ip: _Optional[str] = ..., created_at_unix: _Optional[int] = ..., last_active_at_unix: _Optional[int] = ..., timeout_sec: _Optional[int] = ..., team_id: _Optional[str] = ..., template_id: _Optional[str] = ..., disk_size_mb: _Optional[int] = ..., internet: _Optional[bool] = ..., runtime: _Optional[str] = ..., paused_state: _Optional[str] = ..., egress_bytes: _Optional[int] = ...) -> None: ...

class SandboxEgress(_message.Message):
    __slots__ = ("sandbox_id", "egress_bytes")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    egress_bytes: int
    def __init__(self, sandbox_id: _Optional[str] = ..., egress_bytes: _Optional[int] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes", "auto_paused_sandbox_ids", "creating_sandbox_ids", "reports_creating", "ended_egress")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSED_SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATING_SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_CREATING_FIELD_NUMBER: _ClassVar[int]
    ENDED_EGRESS_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxInfo]
    auto_paused_sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    creating_sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    reports_creating: bool
    ended_egress: _containers.RepeatedCompositeFieldContainer[SandboxEgress]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxInfo, _Mapping]]] = ..., auto_paused_sandbox_ids: _Optional[_Iterable[str]] = ..., creating_sandbox_ids: _Optional[_Iterable[str]] = ..., reports_creating: _Optional[bool] = ..., ended_egress: _Optional[_Iterable[_Union[SandboxEgress, _Mapping]]] = ...) -> None: ...

class PauseAllRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseAllResponse(_message.Message):
    __slots__ = ("sandbox_ids",)
    SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sandbox_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TerminateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TerminateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("sandbox_id", "cmd", "args", "timeout_sec", "env", "cwd", "stdin", "user")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    timeout_sec: int
    env: _containers.ScalarMap[str, str]
    cwd: str
    stdin: bytes
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., timeout_sec: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., stdin: _Optional[bytes] = ..., user: _Optional[str] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ...) -> None: ...

class ExecStart(_message.Message):
    __slots__ = ("sandbox_id", "cmd", "args", "env", "cwd", "timeout_sec", "tag", "background", "user", "backpressure", "credit")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    BACKPRESSURE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    timeout_sec: int
    tag: str
    background: bool
    user: str
    backpressure: bool
    credit: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., timeout_sec: _Optional[int] = ..., tag: _Optional[str] = ..., background: _Optional[bool] = ..., user: _Optional[str] = ..., backpressure: _Optional[bool] = ..., credit: _Optional[bool] = ...) -> None: ...

class ExecStreamRequest(_message.Message):
    __slots__ = ("start", "stdin", "close_stdin", "signal", "output_acked")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ACKED_FIELD_NUMBER: _ClassVar[int]
    start: ExecStart
    stdin: bytes
    close_stdin: bool
    signal: int
    output_acked: int
    def __init__(self, start: _Optional[_Union[ExecStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., close_stdin: _Optional[bool] = ..., signal: _Optional[int] = ..., output_acked: _Optional[int] = ...) -> None: ...

class ExecEvent(_message.Message):
    __slots__ = ("start", "stdout", "stderr", "exit", "stdin_acked")
    class Start(_message.Message):
        __slots__ = ("pid", "credit")
        PID_FIELD_NUMBER: _ClassVar[int]
        CREDIT_FIELD_NUMBER: _ClassVar[int]
        pid: int
        credit: bool
        def __init__(self, pid: _Optional[int] = ..., credit: _Optional[bool] = ...) -> None: ...
    class Exit(_message.Message):
        __slots__ = ("exit_code", "error")
        EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        exit_code: int
        error: str
        def __init__(self, exit_code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
    START_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    STDIN_ACKED_FIELD_NUMBER: _ClassVar[int]
    start: ExecEvent.Start
    stdout: bytes
    stderr: bytes
    exit: ExecEvent.Exit
    stdin_acked: int
    def __init__(self, start: _Optional[_Union[ExecEvent.Start, _Mapping]] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit: _Optional[_Union[ExecEvent.Exit, _Mapping]] = ..., stdin_acked: _Optional[int] = ...) -> None: ...

class ProcessSelector(_message.Message):
    __slots__ = ("pid", "tag")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("pid", "tag", "cmd", "args", "cwd", "running")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    running: bool
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., running: _Optional[bool] = ...) -> None: ...

class ListProcessesRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class ListProcessesResponse(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    def __init__(self, processes: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ...) -> None: ...

class SignalProcessRequest(_message.Message):
    __slots__ = ("sandbox_id", "process", "signal")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    process: ProcessSelector
    signal: int
    def __init__(self, sandbox_id: _Optional[str] = ..., process: _Optional[_Union[ProcessSelector, _Mapping]] = ..., signal: _Optional[int] = ...) -> None: ...

class SignalProcessResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendStdinRequest(_message.Message):
    __slots__ = ("sandbox_id", "process", "data")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    process: ProcessSelector
    data: bytes
    def __init__(self, sandbox_id: _Optional[str] = ..., process: _Optional[_Union[ProcessSelector, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendStdinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseStdinRequest(_message.Message):
    __slots__ = ("sandbox_id", "process")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    process: ProcessSelector
    def __init__(self, sandbox_id: _Optional[str] = ..., process: _Optional[_Union[ProcessSelector, _Mapping]] = ...) -> None: ...

class CloseStdinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttachProcessRequest(_message.Message):
    __slots__ = ("sandbox_id", "process")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    process: ProcessSelector
    def __init__(self, sandbox_id: _Optional[str] = ..., process: _Optional[_Union[ProcessSelector, _Mapping]] = ...) -> None: ...

class WriteFileRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "content", "mode", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    content: bytes
    mode: int
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., content: _Optional[bytes] = ..., mode: _Optional[int] = ..., user: _Optional[str] = ...) -> None: ...

class WriteFileResponse(_message.Message):
    __slots__ = ("bytes_written",)
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    def __init__(self, bytes_written: _Optional[int] = ...) -> None: ...

class ReadFileRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class ReadFileResponse(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    def __init__(self, content: _Optional[bytes] = ...) -> None: ...

class WriteFileMeta(_message.Message):
    __slots__ = ("sandbox_id", "path", "mode", "explicit_commit", "user", "metadata", "window_max", "stops_on_refusal")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MAX_FIELD_NUMBER: _ClassVar[int]
    STOPS_ON_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    mode: int
    explicit_commit: bool
    user: str
    metadata: _containers.ScalarMap[str, str]
    window_max: int
    stops_on_refusal: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., explicit_commit: _Optional[bool] = ..., user: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., window_max: _Optional[int] = ..., stops_on_refusal: _Optional[bool] = ...) -> None: ...

class WriteFileStreamRequest(_message.Message):
    __slots__ = ("meta", "chunk", "commit", "window")
    META_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    meta: WriteFileMeta
    chunk: bytes
    commit: bool
    window: int
    def __init__(self, meta: _Optional[_Union[WriteFileMeta, _Mapping]] = ..., chunk: _Optional[bytes] = ..., commit: _Optional[bool] = ..., window: _Optional[int] = ...) -> None: ...

class ReadFileStreamResponse(_message.Message):
    __slots__ = ("chunk", "window")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    window: int
    def __init__(self, chunk: _Optional[bytes] = ..., window: _Optional[int] = ...) -> None: ...

class ReadFileCreditRequest(_message.Message):
    __slots__ = ("open", "acked", "window")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    open: ReadFileRequest
    acked: int
    window: int
    def __init__(self, open: _Optional[_Union[ReadFileRequest, _Mapping]] = ..., acked: _Optional[int] = ..., window: _Optional[int] = ...) -> None: ...

class WriteFileCreditEvent(_message.Message):
    __slots__ = ("ready", "acked", "done", "refusing", "window")
    READY_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    REFUSING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    acked: int
    done: WriteFileResponse
    refusing: bool
    window: int
    def __init__(self, ready: _Optional[bool] = ..., acked: _Optional[int] = ..., done: _Optional[_Union[WriteFileResponse, _Mapping]] = ..., refusing: _Optional[bool] = ..., window: _Optional[int] = ...) -> None: ...

class EntryInfo(_message.Message):
    __slots__ = ("name", "type", "path", "size", "mode", "permissions", "owner", "group", "modified_time_unix", "symlink_target", "metadata", "target_type", "target_mode", "resolved_target")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TARGET_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    path: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time_unix: int
    symlink_target: str
    metadata: _containers.ScalarMap[str, str]
    target_type: str
    target_mode: int
    resolved_target: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., permissions: _Optional[str] = ..., owner: _Optional[str] = ..., group: _Optional[str] = ..., modified_time_unix: _Optional[int] = ..., symlink_target: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., target_type: _Optional[str] = ..., target_mode: _Optional[int] = ..., resolved_target: _Optional[str] = ...) -> None: ...

class ListDirRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "depth", "limit", "cursor", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    depth: int
    limit: int
    cursor: str
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., depth: _Optional[int] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class ListDirResponse(_message.Message):
    __slots__ = ("entries", "next_cursor", "has_more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[EntryInfo]
    next_cursor: str
    has_more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[EntryInfo, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., has_more: _Optional[bool] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "follow_symlinks", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_SYMLINKS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    follow_symlinks: bool
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., follow_symlinks: _Optional[bool] = ..., user: _Optional[str] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: EntryInfo
    def __init__(self, entry: _Optional[_Union[EntryInfo, _Mapping]] = ...) -> None: ...

class MakeDirRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class MakeDirResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MoveRequest(_message.Message):
    __slots__ = ("sandbox_id", "source", "destination", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    source: str
    destination: str
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class MoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("sandbox_id", "name", "team_id", "template_id")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    name: str
    team_id: str
    template_id: str
    def __init__(self, sandbox_id: _Optional[str] = ..., name: _Optional[str] = ..., team_id: _Optional[str] = ..., template_id: _Optional[str] = ...) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("name", "size_bytes", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    kind: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("name", "team_id", "template_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    team_id: str
    template_id: str
    def __init__(self, name: _Optional[str] = ..., team_id: _Optional[str] = ..., template_id: _Optional[str] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSandboxMetricsRequest(_message.Message):
    __slots__ = ("sandbox_id", "range")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    range: str
    def __init__(self, sandbox_id: _Optional[str] = ..., range: _Optional[str] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("timestamp_unix", "cpu_pct", "mem_bytes", "disk_bytes")
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    CPU_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    timestamp_unix: int
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int
    def __init__(self, timestamp_unix: _Optional[int] = ..., cpu_pct: _Optional[float] = ..., mem_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class GetSandboxMetricsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class LayerMeta(_message.Message):
    __slots__ = ("digest", "size", "team_id", "owner_account_id")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    team_id: str
    owner_account_id: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., team_id: _Optional[str] = ..., owner_account_id: _Optional[str] = ...) -> None: ...

class HasLayersRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class HasLayersResponse(_message.Message):
    __slots__ = ("missing", "admits")
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ADMITS_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    admits: bool
    def __init__(self, missing: _Optional[_Iterable[str]] = ..., admits: _Optional[bool] = ...) -> None: ...

class PutLayerRequest(_message.Message):
    __slots__ = ("meta", "chunk")
    META_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    meta: LayerMeta
    chunk: bytes
    def __init__(self, meta: _Optional[_Union[LayerMeta, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PutLayerResponse(_message.Message):
    __slots__ = ("installed",)
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    installed: bool
    def __init__(self, installed: _Optional[bool] = ...) -> None: ...

class ListLayersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("digest", "size", "in_use")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    in_use: bool
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., in_use: _Optional[bool] = ...) -> None: ...

class ListLayersResponse(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ...) -> None: ...

class DeleteLayersRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteLayersResponse(_message.Message):
    __slots__ = ("deleted", "in_use")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    in_use: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ..., in_use: _Optional[_Iterable[str]] = ...) -> None: ...

class RunBuildStepRequest(_message.Message):
    __slots__ = ("build_id", "chain", "cmd", "timeout_sec", "max_layer_bytes", "vcpus", "memory_mb", "disk_size_mb", "egress_allow", "team_id", "owner_account_id")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    MAX_LAYER_BYTES_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ALLOW_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    chain: TemplateChain
    cmd: str
    timeout_sec: int
    max_layer_bytes: int
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    egress_allow: _containers.RepeatedScalarFieldContainer[str]
    team_id: str
    owner_account_id: str
    def __init__(self, build_id: _Optional[str] = ..., chain: _Optional[_Union[TemplateChain, _Mapping]] = ..., cmd: _Optional[str] = ..., timeout_sec: _Optional[int] = ..., max_layer_bytes: _Optional[int] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_size_mb: _Optional[int] = ..., egress_allow: _Optional[_Iterable[str]] = ..., team_id: _Optional[str] = ..., owner_account_id: _Optional[str] = ...) -> None: ...

class BuildStepEvent(_message.Message):
    __slots__ = ("output", "exit_code", "layer_chunk", "layer")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAYER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    exit_code: int
    layer_chunk: bytes
    layer: LayerMeta
    def __init__(self, output: _Optional[bytes] = ..., exit_code: _Optional[int] = ..., layer_chunk: _Optional[bytes] = ..., layer: _Optional[_Union[LayerMeta, _Mapping]] = ...) -> None: ...

class ExportSnapshotRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class LayerChunk(_message.Message):
    __slots__ = ("chunk", "done")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    done: LayerMeta
    def __init__(self, chunk: _Optional[bytes] = ..., done: _Optional[_Union[LayerMeta, _Mapping]] = ...) -> None: ...

class PtySize(_message.Message):
    __slots__ = ("cols", "rows")
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    cols: int
    rows: int
    def __init__(self, cols: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class PtyStart(_message.Message):
    __slots__ = ("sandbox_id", "size", "cmd", "args", "env", "cwd", "user", "timeout_sec", "credit", "output_credit")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CREDIT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    size: PtySize
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    user: str
    timeout_sec: int
    credit: bool
    output_credit: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., size: _Optional[_Union[PtySize, _Mapping]] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., user: _Optional[str] = ..., timeout_sec: _Optional[int] = ..., credit: _Optional[bool] = ..., output_credit: _Optional[bool] = ...) -> None: ...

class PtyConnect(_message.Message):
    __slots__ = ("sandbox_id", "pid", "credit", "output_credit")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CREDIT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    pid: int
    credit: bool
    output_credit: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., pid: _Optional[int] = ..., credit: _Optional[bool] = ..., output_credit: _Optional[bool] = ...) -> None: ...

class PtyRequest(_message.Message):
    __slots__ = ("start", "connect", "input", "resize", "signal", "output_acked")
    START_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ACKED_FIELD_NUMBER: _ClassVar[int]
    start: PtyStart
    connect: PtyConnect
    input: bytes
    resize: PtySize
    signal: int
    output_acked: int
    def __init__(self, start: _Optional[_Union[PtyStart, _Mapping]] = ..., connect: _Optional[_Union[PtyConnect, _Mapping]] = ..., input: _Optional[bytes] = ..., resize: _Optional[_Union[PtySize, _Mapping]] = ..., signal: _Optional[int] = ..., output_acked: _Optional[int] = ...) -> None: ...

class PtyControlRequest(_message.Message):
    __slots__ = ("sandbox_id", "pid", "input", "resize", "signal")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    pid: int
    input: bytes
    resize: PtySize
    signal: int
    def __init__(self, sandbox_id: _Optional[str] = ..., pid: _Optional[int] = ..., input: _Optional[bytes] = ..., resize: _Optional[_Union[PtySize, _Mapping]] = ..., signal: _Optional[int] = ...) -> None: ...

class PtyControlResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PtyEvent(_message.Message):
    __slots__ = ("started", "output", "exit", "input_acked", "credit", "output_credit")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    INPUT_ACKED_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CREDIT_FIELD_NUMBER: _ClassVar[int]
    started: int
    output: bytes
    exit: ExecEvent.Exit
    input_acked: int
    credit: bool
    output_credit: bool
    def __init__(self, started: _Optional[int] = ..., output: _Optional[bytes] = ..., exit: _Optional[_Union[ExecEvent.Exit, _Mapping]] = ..., input_acked: _Optional[int] = ..., credit: _Optional[bool] = ..., output_credit: _Optional[bool] = ...) -> None: ...

class DialOpen(_message.Message):
    __slots__ = ("sandbox_id", "port")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    port: int
    def __init__(self, sandbox_id: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class DialRequest(_message.Message):
    __slots__ = ("open", "data", "close_write")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_WRITE_FIELD_NUMBER: _ClassVar[int]
    open: DialOpen
    data: bytes
    close_write: bool
    def __init__(self, open: _Optional[_Union[DialOpen, _Mapping]] = ..., data: _Optional[bytes] = ..., close_write: _Optional[bool] = ...) -> None: ...

class DialEvent(_message.Message):
    __slots__ = ("connected", "data", "closed")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    data: bytes
    closed: bool
    def __init__(self, connected: _Optional[bool] = ..., data: _Optional[bytes] = ..., closed: _Optional[bool] = ...) -> None: ...

class DialTicket(_message.Message):
    __slots__ = ("ticket", "data_port", "expires_in_ms", "tls")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    ticket: bytes
    data_port: int
    expires_in_ms: int
    tls: bool
    def __init__(self, ticket: _Optional[bytes] = ..., data_port: _Optional[int] = ..., expires_in_ms: _Optional[int] = ..., tls: _Optional[bool] = ...) -> None: ...

class WatchDirRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "recursive", "user")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    recursive: bool
    user: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., recursive: _Optional[bool] = ..., user: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("type", "path", "entry", "timestamp_ns", "old_path", "overflowed")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    OLD_PATH_FIELD_NUMBER: _ClassVar[int]
    OVERFLOWED_FIELD_NUMBER: _ClassVar[int]
    type: str
    path: str
    entry: EntryInfo
    timestamp_ns: int
    old_path: str
    overflowed: bool
    def __init__(self, type: _Optional[str] = ..., path: _Optional[str] = ..., entry: _Optional[_Union[EntryInfo, _Mapping]] = ..., timestamp_ns: _Optional[int] = ..., old_path: _Optional[str] = ..., overflowed: _Optional[bool] = ...) -> None: ...

class CreateWatcherResponse(_message.Message):
    __slots__ = ("watcher_id",)
    WATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    watcher_id: str
    def __init__(self, watcher_id: _Optional[str] = ...) -> None: ...

class PollWatcherRequest(_message.Message):
    __slots__ = ("sandbox_id", "watcher_id")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    WATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    watcher_id: str
    def __init__(self, sandbox_id: _Optional[str] = ..., watcher_id: _Optional[str] = ...) -> None: ...

class PollWatcherResponse(_message.Message):
    __slots__ = ("events", "overflowed")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OVERFLOWED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    overflowed: bool
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ..., overflowed: _Optional[bool] = ...) -> None: ...

class RemoveWatcherRequest(_message.Message):
    __slots__ = ("sandbox_id", "watcher_id")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    WATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    watcher_id: str
    def __init__(self, sandbox_id: _Optional[str] = ..., watcher_id: _Optional[str] = ...) -> None: ...

class RemoveWatcherResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateNetworkRequest(_message.Message):
    __slots__ = ("sandbox_id", "egress")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    egress: EgressRules
    def __init__(self, sandbox_id: _Optional[str] = ..., egress: _Optional[_Union[EgressRules, _Mapping]] = ...) -> None: ...

class UpdateNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetWarmPoolRequest(_message.Message):
    __slots__ = ("template", "size", "chain")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    template: str
    size: int
    chain: TemplateChain
    def __init__(self, template: _Optional[str] = ..., size: _Optional[int] = ..., chain: _Optional[_Union[TemplateChain, _Mapping]] = ...) -> None: ...

class WarmPoolStatus(_message.Message):
    __slots__ = ("template", "target", "ready")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    template: str
    target: int
    ready: int
    def __init__(self, template: _Optional[str] = ..., target: _Optional[int] = ..., ready: _Optional[int] = ...) -> None: ...

class SetWarmPoolResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[WarmPoolStatus]
    def __init__(self, pools: _Optional[_Iterable[_Union[WarmPoolStatus, _Mapping]]] = ...) -> None: ...
