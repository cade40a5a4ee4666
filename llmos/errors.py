"""The exception tree of llmos, and the exit code each error gives on the command line.

    LlmosError                       exit 1  (an internal error that has no better class)
     +-- ProgramError                exit 3  a program file that cannot be loaded
     +-- InputError                  exit 4  a missing or invalid program input
     +-- ModelError                  exit 5  a model spec or GGUF file that cannot be used
     +-- BackendError                exit 6  a remote CPU that is unreachable or fails
     +-- OutputError                 exit 7  a reply that cannot be made to fit the output schema
     |    +-- StepLimitError         exit 22 llmos.max_steps used up before an answer
     +-- ContextOverflowError        exit 8  a prompt longer than the CPU's context window
     +-- LogStoreError               exit 9  the log database is unusable (no FTS5, corrupt)
     +-- ConfigError                 exit 10 a config file that cannot be read
     +-- AdmissionError              exit 11 the kernel refuses a new process (table full, depth)
     +-- NoSuchProcessError          exit 12 no process with that pid
     +-- KernelError                 exit 13 the kernel daemon is not running or not answering
     +-- MemoryStoreError            exit 15 the memory store is unusable (corrupt, locked, full)
     +-- AccessError                 exit 16 no right to a shared segment or memory; a bad owner
     +-- AuditError                  exit 17 the audit store is unusable or its chain is broken
     +-- PolicyError                 exit 18 a malformed or self-contradicting policy file
     +-- QuotaError                  exit 19 a per-user or per-process quota is used up
     |    +-- BudgetError                    a prompt larger than the process's token budget
     +-- AuthError                   exit 20 a missing, unknown or revoked token; a bad user op
     +-- NotFoundError               exit 21 no memory, page, segment, run or pool CPU by that id
     +-- RequestError                exit 2  a malformed request to the kernel's API

Usage errors (unknown flags, bad option values, an out-of-range priority) exit 2 with one
`llmos: error:` line (never click's usage block), and so does a malformed
request to the kernel (`RequestError`). `llmos wait PID` and `llmos logs -f PID`
exit 14 when the process ended killed, out of budget, failed or lost, and 124 when
`wait --timeout` runs out. An interrupt exits 130.
Every error's message is one line that names the file, field or server at fault; the CLI prints
it as `llmos: error: <message>` on stderr, never a traceback.
"""

from __future__ import annotations


class LlmosError(Exception):
    """Base class: an error with a one-line message and an exit code."""

    exit_code = 1
    kind = "error"


class ProgramError(LlmosError):
    exit_code = 3
    kind = "program"


class NoSuchProgramError(ProgramError):
    """No installed program answers to a name (the service's 404)."""

    kind = "no_such_program"


class InputError(LlmosError):
    exit_code = 4
    kind = "input"


class NotFoundError(LlmosError):
    """No memory, page, shared segment or run answers to that id or name (another owner's
    answers exactly the same). Distinct from InputError: the request was well formed."""

    exit_code = 21
    kind = "not_found"


class NoSuchRunError(NotFoundError):
    """No logged run has that id (or it is another owner's: the same answer)."""


class ModelError(LlmosError):
    exit_code = 5
    kind = "model"


class BackendError(LlmosError):
    exit_code = 6
    kind = "backend"


class ServiceUnreachableError(BackendError):
    """A remote `llmos serve` that cannot be reached (refused, reset, timed out); `llmos shell`
    says so and tries again on the next command."""

    kind = "unreachable"


class OutputError(LlmosError):
    exit_code = 7
    kind = "output"


class StepLimitError(OutputError):
    """A tool-using run that used up `llmos.max_steps` without giving an answer."""

    exit_code = 22
    kind = "step_limit"


class ContextOverflowError(LlmosError):
    exit_code = 8
    kind = "context_overflow"


class LogStoreError(LlmosError):
    exit_code = 9
    kind = "log"


class ConfigError(LlmosError):
    exit_code = 10
    kind = "config"


class AdmissionError(LlmosError):
    exit_code = 11
    kind = "admission"


class NoSuchProcessError(LlmosError):
    exit_code = 12
    kind = "no_such_process"


class KernelError(LlmosError):
    exit_code = 13
    kind = "kernel"


class MemoryStoreError(LlmosError):
    exit_code = 15
    kind = "memory"


class AccessError(LlmosError):
    exit_code = 16
    kind = "access"


class AuditError(LlmosError):
    """The audit store cannot be opened or written, or `llmos audit --verify` found a record
    that does not hash to what the next one says."""

    exit_code = 17
    kind = "audit"


class PolicyError(LlmosError):
    """A per-user policy file that cannot be used; the message names the file and line."""

    exit_code = 18
    kind = "policy"


class QuotaError(LlmosError):
    exit_code = 19
    kind = "quota"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when trying again can succeed (HTTP Retry-After)


class BudgetError(QuotaError):
    """A process's prompt alone would pass its token budget (which counts prompt and generated
    tokens), so it could not generate anything: it ends with status `budget` and this line."""

    kind = "budget"


class AuthError(LlmosError):
    """A token that is missing, unknown or revoked, or a user-store operation that cannot be
    done (a user that does not exist, or one that already does)."""

    exit_code = 20
    kind = "auth"


class RequestError(LlmosError):
    """A request the kernel's API cannot take (bad JSON, unknown op, a bad argument)."""

    exit_code = 2
    kind = "protocol"


EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        LlmosError,
        ProgramError,
        InputError,
        ModelError,
        BackendError,
        OutputError,
        StepLimitError,
        ContextOverflowError,
        LogStoreError,
        ConfigError,
        AdmissionError,
        NoSuchProcessError,
        KernelError,
        MemoryStoreError,
        AccessError,
        AuditError,
        PolicyError,
        QuotaError,
        AuthError,
        NotFoundError,
        RequestError,
    )
}
