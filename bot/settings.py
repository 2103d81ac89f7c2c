"""Parley's settings: one typed tree, loaded once from a TOML file and ``PARLEY_*`` variables.

Precedence: environment > TOML file > defaults. Nested fields use ``__`` in the environment
(``PARLEY_ENGINE__MAX_BATCH=32``). The file is ``--config``, else ``$PARLEY_CONFIG``, else
``parley.toml`` in the working directory when it exists. Secrets (tokens, API keys) come from
the environment or systemd credentials (:mod:`bot.credentials`; the environment wins) only; a
secret in the file is refused so it never lands in version control.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bot.credentials import read_credentials
from bot.errors import ConfigError

DEFAULT_CONFIG_FILE = "parley.toml"
SECRET_FIELDS = {
    ("web", "api_keys"),
    ("web", "admin_token"),
    ("discord", "token"),
    ("telegram", "token"),
    ("telegram", "webhook_secret"),
}


class _Section(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class RedisSettings(_Section):
    url: str | None = None
    """``redis://host:port/db``; unset means ``parley run`` starts an embedded server."""
    shards: int = Field(4, ge=1, le=1024)
    max_stream_len: int = Field(10_000, ge=10)
    """Bound of each request stream; a full stream answers "busy" at once."""
    claim_idle_ms: int = Field(30_000, ge=100)
    """A request pending this long on a silent consumer is reclaimed by another."""
    max_deliveries: int = Field(3, ge=1)
    """A request delivered more often than this goes to the dead-letter stream."""
    reply_stream_len: int = Field(10_000, ge=100)
    reply_stream_ttl_s: int = Field(3600, ge=10)


class SamplingSettings(_Section):
    """Defaults for requests that do not say, and the bounds every request is clamped to."""

    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, ge=1.0)
    max_new_tokens: int = Field(200, ge=1)
    max_temperature: float = Field(2.0, ge=0.0)
    max_new_tokens_limit: int = Field(1000, ge=1)


class TelegramSettings(_Section):
    """The Telegram adapter (``[telegram]``; the token comes from ``PARLEY_TELEGRAM__TOKEN``)."""

    token: SecretStr | None = None
    """From @BotFather. Environment only; ``parley run`` starts the adapter when it is set."""
    base_url: str = "https://api.telegram.org/bot"
    """The Bot API base the token is appended to (a self-hosted Bot API server, tests)."""
    adapter_id: str | None = None
    """Defaults to ``telegram-<host>-<pid>``."""
    admin_ids: list[int] = []
    """Telegram user ids allowed to use /retrain, /rollback and /model."""
    allowed_chats: list[int] = []
    """Chat ids the bot answers in (users' ids for private chats); empty means every chat.
    Others get one polite refusal."""
    mode: Literal["polling", "webhook"] = "polling"
    poll_timeout_s: int = Field(30, ge=0, le=50)
    """Long-polling wait of one getUpdates call."""
    poller_lease_s: float = Field(15.0, ge=0.5)
    """One process per token polls; it renews a lease in Redis this long, the others wait."""
    webhook_url: str | None = None
    """Public HTTPS URL Telegram posts updates to (your reverse proxy), webhook mode only."""
    webhook_path: str = "/telegram"
    """Path the adapter's own server answers on; the proxy forwards the URL to it."""
    webhook_secret: SecretStr | None = None
    """Checked against X-Telegram-Bot-Api-Secret-Token. Environment only
    (``PARLEY_TELEGRAM__WEBHOOK_SECRET``); required in webhook mode."""
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(8443, ge=0, le=65535)
    rate_limit: str = "10/minute"
    """Messages one user may send, in the ``limits`` notation; one notice per window."""
    max_message_chars: int = Field(4000, ge=1)
    reply_timeout_s: float = Field(120.0, gt=0)
    private_interval_s: float = Field(1.0, ge=0.0)
    """Least time between two messages or edits in a private chat (Telegram: ~1/s)."""
    group_interval_s: float = Field(3.0, ge=0.0)
    """Least time between two messages or edits in a group (Telegram: 20/min)."""
    typing_every_s: float = Field(4.0, gt=0.0)
    """The typing action lasts ~5 s; it is renewed this often while a reply is awaited."""
    metrics_port: int = Field(0, ge=0, le=65535)
    """``parley adapter telegram`` serves Prometheus metrics on this port (0 = off)."""

    @model_validator(mode="after")
    def _webhook_complete(self) -> TelegramSettings:
        if self.mode == "webhook" and (self.webhook_url is None or self.webhook_secret is None):
            raise ValueError("webhook mode needs webhook_url and PARLEY_TELEGRAM__WEBHOOK_SECRET")
        if not self.webhook_path.startswith("/"):
            raise ValueError("webhook_path must start with /")
        secret = self.webhook_secret.get_secret_value() if self.webhook_secret else "x"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise ValueError("webhook_secret must be 1-256 characters of A-Z a-z 0-9 _ -")
        return self


class DiscordSettings(_Section):
    """The Discord adapter (``[discord]``); the token comes from ``PARLEY_DISCORD__TOKEN``."""

    token: SecretStr | None = None
    """The bot token. Environment only; ``parley run`` starts Discord when it is set."""
    api_base: str = "https://discord.com/api/v10"
    """REST base with its version path, as discord.py builds its URLs from it."""
    gateway_url: str = "wss://gateway.discord.gg/"
    """Where the first gateway connection goes; resumes use the URL the gateway names."""
    adapter_id: str | None = None
    """Defaults to ``discord-<host>`` (stable across restarts, so a restarted adapter delivers
    what its predecessor owed); set one per process to run two Discord adapters on a host."""
    guild_ids: list[int] = []
    """Slash commands are synced to these guilds (instant); empty: globally (up to an hour)."""
    admin_ids: list[int] = []
    """Users who may run the admin commands."""
    admin_role_ids: list[int] = []
    """Members holding one of these roles may run the admin commands."""
    answer_channels: list[int] = []
    """Channels where the bot answers every message, mentioned or not."""
    random_reply_probability: float = Field(0.0, ge=0.0, le=1.0)
    """Chance of answering any other server message that does not address the bot."""
    allow_dms: bool = True
    context: Literal["channel-user", "channel", "reply-chain"] = "channel-user"
    """What one conversation is: a user in a channel, a whole channel, or a reply chain."""
    rate_limit: str = "5/minute"
    """Messages per user (``"5/minute"``, ``"20 per hour"``); one notice per blocked spell."""
    message_content: bool = True
    """Ask for the privileged message-content intent; without it (or if Discord refuses it)
    the bot still answers mentions, DMs, replies to it and slash commands."""
    max_message_chars: int = Field(2000, ge=1)
    """Longer user messages get a short refusal instead of an answer."""
    reply_timeout_s: float = Field(120.0, gt=0)
    edit_interval_s: float = Field(1.0, ge=0.1)
    """Least time between two edits of a streaming reply."""
    guild_ready_timeout_s: float = Field(2.0, gt=0)
    """At start-up, how long to wait for more guilds before the bot counts as ready."""
    metrics_port: int = Field(0, ge=0, le=65535)
    """``parley adapter discord`` serves Prometheus metrics on this port (0 = off)."""

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, v: str) -> str:
        import limits

        try:
            limits.parse(v)
        except ValueError:
            raise ValueError("expected a rate like '5/minute' or '20 per hour'") from None
        return v


class EngineSettings(_Section):
    worker_id: str | None = None
    """Defaults to ``hostname-pid``."""
    model: Path | None = None
    """A checkpoint directory to serve; unset means the registry's live version, else the
    bundled starter model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int = Field(64, ge=1)
    max_waiting: int = Field(256, ge=1)
    """Requests held beyond the running batch; more get a "busy" reply at once."""
    read_block_ms: int = Field(50, ge=1)
    stream_interval_ms: int = Field(100, ge=0)
    """How often a streaming reply sends a ``delta`` event (0 = every token)."""
    prefill_chunk_tokens: int = Field(256, ge=16)
    cache_bytes: int = Field(256 * 2**20, ge=0)
    state_ttl_s: int = Field(24 * 3600, ge=1)
    history_max_chars: int = Field(20_000, ge=100)
    torch_threads: int = Field(0, ge=0)
    """0 = torch's default."""
    cuda_graphs: bool = True
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """What the engine computes in. ``auto``: bfloat16 on a GPU; on a CPU that multiplies
    bf16 natively (AVX512-BF16 or AMX), bfloat16 if a decode step measured at start-up is
    faster with it (a GRU's: ~1.7x), else float32. A CPU keeps cached states in float32."""
    heartbeat_s: float = Field(2.0, gt=0)
    metrics_port: int = Field(0, ge=0, le=65535)
    """``parley engine`` serves Prometheus metrics on this port (0 = off; ``parley run``
    serves them on the web adapter's ``/metrics``)."""


class ReplySettings(_Section):
    """How the engine picks a reply (``[reply]``; :mod:`engine.serve.replies`)."""

    mode: Literal["generate", "retrieve", "hybrid"] = "retrieve"
    """``generate``: one sampled reply, streamed token by token. ``retrieve``: the best of
    the ``k`` past replies (from the model's training conversations) whose preceding turn
    best matches the message, sent whole once chosen; a generated reply, streamed, when
    none matches. ``hybrid``: the best of ``n`` sampled replies (one batched step) and
    those ``k``, sent whole once chosen. The default is what ``bench/quality.py`` found best."""
    n: int = Field(4, ge=1, le=16)
    """Sampled candidates in ``hybrid`` mode."""
    k: int = Field(8, ge=1, le=64)
    """Remembered candidates (``retrieve`` and ``hybrid``)."""
    ranking: Literal["likelihood", "pmi", "fused"] = "fused"
    """How candidates are ranked: the model's length-normalised log-likelihood of each given
    the conversation (``likelihood``); that minus its likelihood without the conversation
    (``pmi``, which stops short generic lines winning everywhere); or PMI plus
    ``lexical_weight`` x the TF-IDF cosine of the conversation and the candidate (``fused``:
    the words they share, which the model alone weighs too little). The default and its
    weight rank true replies best on the validation split (R@1 of 10); ``parley eval``
    reports that figure on the test split as ``r_at_1_fused``."""
    lexical_weight: float = Field(6.0, ge=0.0)
    """With ``ranking = "fused"``: nats per token one unit of TF-IDF cosine is worth."""
    repeat_penalty: float = Field(1.0, ge=0.0)
    """Nats per token a candidate loses when it repeats one of the bot's last 3 lines."""


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    adapter_id: str | None = None
    api_keys: list[SecretStr] = []
    """Bearer keys for the API. Environment only: ``PARLEY_WEB__API_KEYS='["k1","k2"]'``."""
    admin_token: SecretStr | None = None
    max_message_chars: int = Field(4000, ge=1)
    reply_timeout_s: float = Field(120.0, gt=0)
    trusted_proxies: list[str] = []
    """Reverse proxies (addresses or networks) whose ``X-Forwarded-For`` names the client;
    from any other peer the header is ignored, and a forwarded request is never local."""
    rate_limit: str | None = "30/minute"
    """POST requests (chat, API, reset, forget, feedback, dashboard actions) per client (its
    API key, else its address); unset: no limit."""
    global_rate_limit: str | None = "1200/minute"
    """POST requests of all clients together; unset: no limit."""


class SafetySettings(_Section):
    """The output filter (:mod:`bot.safety`): what the bot must never say."""

    blocklist: list[str] = []
    """Words and phrases, matched whole-word and case-insensitively."""
    patterns: list[str] = []
    """Regular expressions (Python syntax)."""
    action: Literal["mask", "replace", "regenerate"] = "mask"
    """What a blocked reply becomes: ``mask`` (matches starred out), ``replace`` (the whole
    reply is ``replacement``), ``regenerate`` (a new reply to the same message, with another
    seed; ``replacement`` once ``regenerate_attempts`` new replies were blocked too)."""
    regenerate_attempts: int = Field(2, ge=1, le=5)
    """``regenerate``: how many new replies to ask for before falling back to ``replacement``."""
    replacement: str = "I'd rather not say that."
    classifier: str | None = None
    """Optional hook ``"package.module:function"``: called with a reply, true blocks it."""
    exclude_from_training: bool = True
    """Keep messages the filter matches out of training data."""


class TrainSettings(_Section):
    preset: str = "default"
    budget_s: float = Field(600.0, gt=0)
    seed: int = 1337


class LearningSettings(_Section):
    """The learning loop: what the trainer service archives, what it trains on, what it
    publishes (``[learning]`` in the TOML file)."""

    archive_platforms: list[str] = ["discord", "telegram", "web"]
    """Platforms whose logged exchanges are archived (``[]``: none, the archive stays empty)."""
    archive_chats: list[str] = []
    """If set, only these chats are archived, each as ``platform:chat``
    (``telegram:-1001234``); empty means every chat of ``archive_platforms``."""
    bot_replies: Literal["never", "good"] = "good"
    """Which of the bot's own replies training may use: ``never``, or only those marked
    good (a 👍 and no 👎). Every human message of a consenting user is used."""
    good_reply_weight: int = Field(1, ge=1, le=10)
    """A conversation holding a reply marked good is written this many times into the
    training data (1: no weighting)."""
    corpora: list[str] = ["chitchat"]
    """Data a retrain adds to the archive (``--data`` specs: ``chitchat`` or files), so
    the model keeps what it knew."""
    archive_share: float = Field(0.5, ge=0.0, lt=1.0)
    """Least share of a retrain's training text that comes from the archive: a small archive
    beside large corpora is repeated (at most 20 times) until it makes this share, so the
    community is not drowned out. 0: the sources as they are."""
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    """Share of conversations held out (by a hash of their id: a fixed split)."""
    min_improvement: float = Field(0.0, ge=0.0, lt=1.0)
    """A retrained model is published only if its bits/char on the archive's held-out
    conversations (the corpora's, when the archive is empty) are below the live model's by
    more than this fraction (0: any improvement) ..."""
    max_corpora_rise: float = Field(0.05, ge=0.0, lt=1.0)
    """... and its bits/char on the corpora's held-out conversations are above the live
    model's by at most this fraction (what it may forget while learning the community)."""
    warm_start: bool = True
    """Retrain from the live model's weights (its tokenizer kept); off: from scratch."""
    budget_s: float = Field(600.0, gt=0)
    """Wall-clock training budget of one retrain job."""
    max_steps: int | None = Field(None, ge=1)
    """A retrain job also stops after this many optimizer steps (unset: the budget alone)."""
    progress_interval_s: float = Field(10.0, ge=0.5)
    """Least time between two progress reports to the admin who asked."""
    trainer_id: str | None = None
    """Consumer name of this trainer in the log stream's group (default: the host name)."""


class Settings(BaseSettings):
    """The whole settings tree. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path.home() / ".local" / "share" / "parley"
    """Models, the conversation archive and the runtime file live here."""
    models_url: str | None = None
    """Where the model registry lives: a directory or an fsspec URL (``s3://bucket/models``,
    ``gs://…``, ``file:///…``) that every host reads, so engines on other hosts load the
    same versions. Object stores need their fsspec backend installed (``pip install s3fs``,
    ``gcsfs``, ``adlfs``) and its credentials (for S3: the usual AWS variables or files).
    Unset: ``data_dir/models``."""
    log_level: str = "INFO"
    redis: RedisSettings = RedisSettings()
    sampling: SamplingSettings = SamplingSettings()
    engine: EngineSettings = EngineSettings()
    reply: ReplySettings = ReplySettings()
    web: WebSettings = WebSettings()
    discord: DiscordSettings = DiscordSettings()
    telegram: TelegramSettings = TelegramSettings()
    train: TrainSettings = TrainSettings()
    safety: SafetySettings = SafetySettings()
    learning: LearningSettings = LearningSettings()

    @field_validator("models_url")
    @classmethod
    def _known_store(cls, v: str | None) -> str | None:
        if v is None:
            return v
        protocol = fsspec.core.split_protocol(v)[0] or "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as e:  # the store's backend is the user's optional install
            raise ValueError(f"{protocol}:// needs its fsspec backend installed: {e}") from e
        except ValueError as e:
            raise ValueError(f"unknown storage scheme {protocol!r}") from e
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives through init_settings; the environment wins over it.
        return env_settings, init_settings

    @property
    def models_dir(self) -> Path:
        """The model registry's directory when ``models_url`` is unset."""
        return self.data_dir / "models"

    @property
    def models_location(self) -> str:
        """Where the model registry lives: ``models_url``, else ``models_dir``."""
        return self.models_url or str(self.models_dir)

    @property
    def models_cache_dir(self) -> Path:
        """Local copies of the versions read from a ``models_url`` that is not local."""
        return self.data_dir / "model-cache"

    @property
    def archive_file(self) -> Path:
        """The conversation archive (SQLite) the trainer service writes."""
        return self.data_dir / "archive.sqlite3"

    @property
    def runtime_file(self) -> Path:
        return self.data_dir / "runtime.json"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e.reason}") from e
    except OSError as e:  # a directory, no permission, an I/O error
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    for section, name in SECRET_FIELDS:
        table = data.get(section, {})
        if isinstance(table, dict) and name in table:
            env = f"PARLEY_{section.upper()}__{name.upper()}"
            raise ConfigError(
                f"{path}: [{section}] {name} is a secret; set it in the environment ({env})"
            )
    return data


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        env = "PARLEY_" + "__".join(str(p).upper() for p in err["loc"])
        lines.append(f"setting {where} ({env}): {err['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Load the settings tree once. Raises :class:`ConfigError` naming what is wrong."""
    if os.environ.get("PARLEY_REDIS_URL") and not os.environ.get("PARLEY_REDIS__URL"):
        # The short name the README uses; the nested form is what pydantic-settings reads.
        overrides.setdefault("redis", {})
        data_redis_url = os.environ["PARLEY_REDIS_URL"]
    else:
        data_redis_url = None
    path = config or (
        Path(os.environ["PARLEY_CONFIG"]) if os.environ.get("PARLEY_CONFIG") else None
    )
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = Path(DEFAULT_CONFIG_FILE)
    data = _read_toml(path) if path is not None else {}
    for section, fields in read_credentials(SECRET_FIELDS).items():  # systemd LoadCredential=
        if isinstance(data.get(section, {}), dict):
            data[section] = {**data.get(section, {}), **fields}
    for key, value in overrides.items():
        if value is not None and value != {}:
            data[key] = value
    if data_redis_url:
        data.setdefault("redis", {})["url"] = data_redis_url
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
    except SettingsError as e:  # an environment variable that does not parse (bad JSON)
        raise ConfigError(_describe_env_error(e)) from None


def _describe_env_error(e: SettingsError) -> str:
    """Which ``PARLEY_*`` variables may hold the value that did not parse (never the value:
    it may be a secret)."""
    field = re.search(r'field "([^"]+)"', str(e))
    prefix = f"PARLEY_{field[1].upper()}" if field else "PARLEY_"
    names = sorted(n for n in os.environ if n == prefix or n.startswith(f"{prefix}__"))
    cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
    return (
        f"invalid settings: cannot parse {' or '.join(names) or prefix + '*'} from the "
        f"environment{cause}; lists and tables are JSON, e.g. PARLEY_WEB__API_KEYS='[\"k1\"]'"
    )
